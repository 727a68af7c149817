"""Arrays stored as `.npy` shards, written a shard at a time and read as one: length, shape and
rows by index, never concatenated.

Every read maps the shards it touches (`np.load(mmap_mode="r")`), copies the rows out and drops
the mapping again. A mapping held open keeps each page it ever touched in the process's resident
set, so one pass over a 20 GB split would show as 20 GB of RSS (and count against a container's
memory limit) although the kernel could drop those pages; mapped per read, only the rows asked for
stay. Mapping afresh costs little: gathering a random batch of 64 images at 256 px from the
shards took 4 % of the time that converting the batch to float takes (measured in one run).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ldm.errors import DataError


class ShardWriter:
    """Rows and their int labels, appended in order and saved `shard_size` rows at a time as
    `<name>-NNNNN.npy` and `labels-NNNNN.npy` (`shards`, as meta.json lists them); only one
    shard is held in memory, whatever the number of rows."""

    def __init__(self, folder: Path, shard_size: int, name: str) -> None:
        self.folder, self.shard_size, self.name = Path(folder), shard_size, name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        self.count = 0  # rows added
        self._rows: np.ndarray | None = None
        self._labels = np.empty(shard_size, np.int64)
        self._filled = 0

    def add(self, rows: np.ndarray, labels: np.ndarray) -> None:
        """Append (B, ...) rows and their (B,) labels."""
        for row, label in zip(rows, labels, strict=True):
            if self._rows is None:
                self._rows = np.empty((self.shard_size, *row.shape), row.dtype)
            self._rows[self._filled], self._labels[self._filled] = row, label
            self._filled += 1
            self.count += 1
            if self._filled == self.shard_size:
                self.flush()

    def flush(self) -> None:
        """Save the rows held as the next shard (the last one may be short)."""
        if not self._filled:
            return
        index = len(self.shards)
        rows, labels = f"{self.name}-{index:05d}.npy", f"labels-{index:05d}.npy"
        np.save(self.folder / rows, self._rows[: self._filled], allow_pickle=False)
        np.save(self.folder / labels, self._labels[: self._filled], allow_pickle=False)
        self.shards.append({self.name: rows, "labels": labels, "count": self._filled})
        self._filled = 0


class ShardedArray:
    """The rows of several `.npy` files of one row shape and dtype, as one read-only array.

    Indexing with an int, a slice or an array of ints (any order, repeats allowed) returns a new
    in-memory array, as numpy's fancy indexing does; a slice is read as the rows it names.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        if not files:
            raise DataError("no shards to read: the folder's meta.json lists none")
        self.files = [Path(f) for f in files]
        counts, row_shape, dtype = [], None, None
        for path in self.files:
            rows = self._map(path)
            if row_shape is None:
                row_shape, dtype = rows.shape[1:], rows.dtype
            elif (rows.shape[1:], rows.dtype) != (row_shape, dtype):
                raise DataError(
                    f"{path}: rows {rows.shape[1:]} {rows.dtype} differ from the first shard's "
                    f"{row_shape} {dtype}; rerun the stage that wrote the folder"
                )
            counts.append(len(rows))
        self.row_shape, self.dtype = tuple(row_shape), dtype
        # Shard s holds rows starts[s] to starts[s + 1] - 1.
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @staticmethod
    def _map(path: Path) -> np.ndarray:
        if not path.is_file():
            raise DataError(f"{path}: shard missing; rerun the stage that wrote the folder")
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def __getitem__(self, key: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        if np.ndim(key) == 0:
            return self.take(np.array([key]))[0]
        return self.take(np.asarray(key))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows `indices` (K,) in that order: (K, *row_shape)."""
        idx = np.asarray(indices).astype(np.int64, copy=False).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((len(idx), *self.row_shape), dtype=self.dtype)
        shard = np.searchsorted(self.starts, idx, side="right") - 1  # (K,)
        for s in np.unique(shard):
            hit = shard == s
            out[hit] = self._map(self.files[s])[idx[hit] - self.starts[s]]
        return out
