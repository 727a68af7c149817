"""Ordered parallel map over worker processes, shared by the data stages."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def ordered_map(
    function: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Any]:
    """Yield `function(item)` in input order; `workers` 0 = one per core, 1 = this process.

    Workers come from a fork server: unlike `fork`, a worker never inherits a lock held by one of
    the parent's threads (polars, torch and Prefect all run thread pools), and unlike `spawn` it
    does not re-import the caller's program, only the module that defines `function`.
    """
    workers = min(workers or os.cpu_count() or 1, len(items))
    if workers <= 1:
        for result in map(function, items):
            if progress:
                progress(1)
            yield result
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([function.__module__])
    # Small chunks keep the bar moving and the load balanced; larger ones cut pickling overhead.
    chunksize = max(1, min(64, len(items) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for result in pool.map(function, items, chunksize=chunksize):
            if progress:
                progress(1)
            yield result
