"""Deterministic training batches from prepared shards.

Batch k is a function of (seed, k) alone: every epoch is a fresh permutation drawn from the
seed and the epoch number, and each batch's flips from the seed and k. A run resumed at step k
therefore sees exactly the batches the uninterrupted run would have seen. Images are read per
batch, so a split stored as memory-mapped shards (`ShardedArray`) is never loaded whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ldm.data.shards import ShardedArray

# In-training checks reconstruct at most this many val images, spread evenly over the split:
# enough for a steady L1/PSNR curve and a grid of every class, at a cost in memory and time that
# does not grow with the split (256 images at 256 px are 200 MB as float32). The final
# measurement still covers the whole val split, batch by batch.
CHECK_IMAGES = 256


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = torch.tensor(np.asarray(images)).permute(0, 3, 1, 2)  # (B, 3, H, W), a writable copy
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC, clamped."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def check_images(images: np.ndarray | ShardedArray) -> torch.Tensor:
    """A fixed subset of uint8 NHWC `images`, evenly spread (the split is ordered by class), in
    [-1, 1]: (K, 3, H, W) with K = min(N, CHECK_IMAGES)."""
    k = min(len(images), CHECK_IMAGES)
    return to_model_range(images[np.unique(np.linspace(0, len(images) - 1, k).round().astype(int))])


class ImageBatches:
    def __init__(
        self,
        images: np.ndarray | ShardedArray,  # (N, H, W, 3) uint8, read one batch at a time
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        hflip: bool,
    ) -> None:
        if len(images) == 0:
            raise ValueError("no images to train on")
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.hflip = batch_size, seed, hflip
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(len(self.images), generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        n = len(self.images)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        return np.array([int(self._perm(int(p // n))[p % n]) for p in positions])

    def pictures(self, keys: torch.Tensor) -> torch.Tensor:
        """The pictures `keys` name (see `batch`), in [-1, 1] (K, 3, H, W)."""
        idx, flip = (keys // 2).numpy(), (keys % 2).bool()
        order = np.argsort(idx)
        x = to_model_range(self.images[idx[order]])[np.argsort(order)]
        x[flip] = x[flip].flip(-1)
        return x

    def keys(self, step: int) -> torch.Tensor:
        """The keys of batch `step` (see `batch`) without reading a pixel: a DDP rank reads
        only its own slice of the global batch with `pictures`."""
        idx = torch.from_numpy(self.indices(step))
        flip = torch.zeros(len(idx), dtype=torch.bool)
        if self.hflip:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * step + 1)
            flip = torch.rand(len(idx), generator=g) < 0.5
        return idx * 2 + flip.long()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (B, 3, H, W), labels (B,) and keys (B,) for step `step`.

        A key names the exact picture shown, 2·index + flipped, so per-image features can be
        cached across epochs.
        """
        keys = self.keys(step)
        y = torch.from_numpy(np.asarray(self.labels[(keys // 2).numpy()], dtype=np.int64))
        return self.pictures(keys), y, keys
