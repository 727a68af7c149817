"""Cached latents as shards: `latents-NNNNN.npy` (n x C x h x w float16) + `labels-NNNNN.npy`.

Written a shard at a time by `LatentShardWriter` (encode), read a batch at a time through
`open_latents` (train_diffusion), so neither stage holds every latent in memory.

float16 on disk: the latents are normalised to about unit scale, where float16's rounding
(relative 2^-11) is 16 times finer than the bfloat16 the model trains in on a GPU and far below
the flow's own noise; it halves the disk, the DVC cache and the bytes read per step. The
statistics in meta.json are those of the stored values, accumulated in float64 as they are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.data.shards import ShardedArray, ShardWriter
from ldm.errors import DataError

STORED_DTYPE = np.float16


class LatentShardWriter(ShardWriter):
    """Latent shards (`latents-NNNNN.npy`), and the per-channel statistics of the stored values."""

    def __init__(self, folder: Path, shard_size: int) -> None:
        super().__init__(folder, shard_size, "latents")
        self.row_shape: tuple[int, ...] | None = None
        self._sum = self._sum_sq = None  # per channel, float64

    def add(self, latents: np.ndarray, labels: np.ndarray) -> None:
        """Append (B, C, h, w) latents and their (B,) labels."""
        stored = np.asarray(latents).astype(STORED_DTYPE)
        if self.row_shape is None:
            self.row_shape = stored.shape[1:]
            self._sum = np.zeros(self.row_shape[0], np.float64)
            self._sum_sq = np.zeros(self.row_shape[0], np.float64)
        values = stored.astype(np.float64)  # (B, C, h, w)
        self._sum += values.sum(axis=(0, 2, 3))
        self._sum_sq += np.square(values).sum(axis=(0, 2, 3))
        super().add(stored, labels)

    def close(self) -> dict[str, Any]:
        """Write the last shard; return what meta.json records: count, shape, shards, stats."""
        self.flush()
        if not self.count:
            raise DataError("no latents were written: the train split is empty")
        per_channel = self.count * self.row_shape[1] * self.row_shape[2]
        mean = self._sum / per_channel
        std = np.sqrt(np.maximum(self._sum_sq / per_channel - mean**2, 0.0))
        return {
            "count": self.count,
            "shape": list(self.row_shape),
            "dtype": np.dtype(STORED_DTYPE).name,
            "shards": self.shards,
            "channel_mean": mean.tolist(),
            "channel_std": std.tolist(),
        }


class LatentRows:
    """A variant's latents for torch code: indexed like a (N, C, h, w) float32 tensor (a tensor
    or array of indices, a slice or an int), read from the shards; `len` and `shape` as well."""

    def __init__(self, array: ShardedArray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.array.shape)

    def __getitem__(self, key: torch.Tensor | np.ndarray | slice | int) -> torch.Tensor:
        if torch.is_tensor(key):
            key = key.cpu().numpy()
        return torch.from_numpy(np.asarray(self.array[key])).float()  # float16 on disk


def open_latents(folder: Path, meta: dict[str, Any]) -> tuple[LatentRows, torch.Tensor]:
    """(latents read per batch, labels (N,) in memory) of a folder encode wrote, `meta` its
    meta.json."""
    options = f"--variant {meta.get('variant')} --seed {meta.get('seed', 0)}"
    folder, again = Path(folder), f"run `ldm encode {options}` again"
    if "shards" not in meta:  # a folder from before latents were sharded
        raise DataError(f"{folder}: an older latents layout; {again}")
    shards = meta["shards"]
    latents = ShardedArray([folder / s["latents"] for s in shards])
    labels = np.concatenate([np.load(folder / s["labels"], allow_pickle=False) for s in shards])
    if len(latents) != meta["count"] or len(labels) != meta["count"]:
        raise DataError(
            f"{folder}: meta.json counts {meta['count']} latents but the shards hold "
            f"{len(latents)} latents and {len(labels)} labels; {again}"
        )
    return LatentRows(latents), torch.from_numpy(labels.astype(np.int64))
