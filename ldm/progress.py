"""Progress of long loops for the person watching, wherever they watch from.

On a terminal: a rich bar. Anywhere else (under `ldm run`, `dvc repro`, CI, a Prefect worker,
a log file): a plain line at least every PLAIN_EVERY_S seconds, also while one slow step is
still running, naming the stage, the step, the latest loss, images/s and the time left.

A resumed loop first reports the units an earlier process did (`already_done=True`): they count
toward the total, not toward the rate or the time left, which measure this process alone.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

PLAIN_EVERY_S = 10.0  # under the 15 s a log reader waits before wondering whether it hangs

# How far each loop of this process got, by its description: what an interrupted stage reports
# ("interrupted during train_diffusion@plain-0 at step 622").
_reached: dict[str, int] = {}


def reached(description: str) -> int | None:
    """The count the loop named `description` last reported in this process, if it ran."""
    return _reached.get(description)


class Advance(Protocol):
    def __call__(self, n: int = 1, *, already_done: bool = False, **status: float) -> None: ...


def notice(message: str) -> None:
    """A line for the person watching, on stderr beside the progress (and in any log)."""
    print(message, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class PlainLines:
    """Writes `stage  step 120/600  loss 0.2431  62 img/s  ETA 3m12s` lines to stderr."""

    def __init__(self, description: str, total: int | None, images_per_unit: int | None) -> None:
        self.description, self.total, self.images_per_unit = description, total, images_per_unit
        self.done, self.already, self.status = 0, 0, {}  # `already`: done before this process
        self.started = self.last_line = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> PlainLines:
        # No opening line: a quick loop gets one line, its last; a slow one a line every
        # PLAIN_EVERY_S seconds from its start.
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._heartbeat.join(timeout=1)
        if exc[0] is None:
            self._print(final=True)

    def advance(self, n: int = 1, *, already_done: bool = False, **status: float) -> None:
        with self._lock:
            self.done += n
            self.already += n if already_done else 0
            self.status.update(status)
            _reached[self.description] = self.done
        if time.monotonic() - self.last_line >= PLAIN_EVERY_S:
            self._print()

    def _beat(self) -> None:
        """Prints even when a single step outlasts the interval (compilation, a slow batch)."""
        while not self._stop.wait(1.0):
            if time.monotonic() - self.last_line >= PLAIN_EVERY_S:
                self._print()

    def line(self, final: bool = False) -> str:
        with self._lock:
            done, ran, status = self.done, self.done - self.already, dict(self.status)
        elapsed = time.monotonic() - self.started
        parts = [self.description]
        parts.append(f"{done}/{self.total}" if self.total else f"{done}")
        parts += [f"{key} {value:.4g}" for key, value in status.items() if value == value]
        if self.images_per_unit and elapsed > 0 and ran > 0:
            parts.append(f"{ran * self.images_per_unit / elapsed:.1f} img/s")
        if final:
            parts.append(f"done in {_duration(elapsed)}")
        elif self.total and ran > 0:
            parts.append(f"ETA {_duration(elapsed / ran * (self.total - done))}")
        else:
            parts.append(f"{_duration(elapsed)} elapsed")
        return "  ".join(parts)

    def _print(self, final: bool = False) -> None:
        self.last_line = time.monotonic()
        print(self.line(final), file=sys.stderr, flush=True)


@contextmanager
def progress_bar(
    description: str, total: int | None = None, images_per_unit: int | None = None
) -> Iterator[Advance]:
    """Yield `advance(n, **status)`: a rich bar on a terminal, plain lines anywhere else.

    `status` (e.g. loss=0.24) is shown with the progress; `images_per_unit` turns the rate
    into images/s (a training step of batch 64 is 64 images).
    """
    if not sys.stderr.isatty():
        with PlainLines(description, total, images_per_unit) as lines:
            yield lines.advance
        return

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    _reached[description] = 0
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, *, already_done: bool = False, **status: float) -> None:
            _reached[description] = _reached.get(description, 0) + n
            if already_done:  # restart the clock at that count: rich's speed counts from here
                done = next(t.completed for t in progress.tasks if t.id == task)
                progress.reset(task, completed=int(done) + n)
                return
            shown = "  ".join(f"{k} {v:.4g}" for k, v in status.items() if v == v)  # not NaN
            progress.update(task, advance=n, **({"status": shown} if status else {}))

        yield advance
