"""Features of many images, batch by batch: only one batch of pixels is in memory at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ldm.data.batches import to_model_range
from ldm.pretrained.base import FeatureNet
from ldm.progress import progress_bar

ImageBatch = np.ndarray | torch.Tensor


class Batches:
    """Rows of `images` (all of them, or `rows` in that order) in batches of `batch_size`, each
    read when the loop reaches it: a split stored as shards (`ShardedArray`) is never held whole.

    `total` is the number of images, known before the first read (for the progress bar);
    iterating again reads the same batches in the same order.
    """

    def __init__(self, images: Any, batch_size: int, rows: np.ndarray | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.images, self.batch_size = images, batch_size
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        self.total = len(images) if self.rows is None else len(self.rows)

    def __len__(self) -> int:
        """The number of batches."""
        return -(-self.total // self.batch_size)

    def __iter__(self) -> Iterator[ImageBatch]:
        for start in range(0, self.total, self.batch_size):
            stop = start + self.batch_size
            if self.rows is None:
                yield self.images[start:stop]
            else:
                yield self.images[self.rows[start:stop]]


def batches_of(images: Any, batch_size: int, rows: np.ndarray | None = None) -> Batches:
    """`images` (uint8 NHWC or float NCHW; an array, a tensor or a `ShardedArray`) cut into
    batches of `batch_size`, read one at a time; with `rows`, those rows in that order."""
    return Batches(images, batch_size, rows)


def model_input(batch: ImageBatch) -> torch.Tensor:
    """uint8 NHWC (as stored) or float NCHW in [-1, 1] -> float32 NCHW in [-1, 1]."""
    if torch.is_tensor(batch) and batch.dtype == torch.uint8:
        batch = batch.cpu().numpy()
    if isinstance(batch, np.ndarray) and batch.dtype == np.uint8:
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (B, H, W, 3), got {batch.shape}")
        return to_model_range(batch)
    x = torch.as_tensor(batch).float()
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float images must be (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
    return x


def total_images(batches: Iterable[ImageBatch]) -> int | None:
    """How many images `batches` hold, where that is known without reading them."""
    if isinstance(batches, Batches):
        return batches.total
    if isinstance(batches, Sequence):
        return sum(len(b) for b in batches)
    return None


@torch.no_grad()
def extract_features(
    net: FeatureNet, batches: Iterable[ImageBatch], device: torch.device | None = None
) -> np.ndarray:
    """(N, net.dim) float64 features of all images in `batches`, in order, with progress.

    Each batch is uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1]; it is moved to `device`
    (default: where the net's weights are). `batches_of(...)` or a list of batches gives a
    progress bar with a total; any other iterable (a generator) is read as it comes.
    """
    if device is None:
        device = next(net.parameters()).device
    chunks = []
    with progress_bar(f"{net.name} features", total_images(batches)) as advance:
        for batch in batches:
            chunks.append(net(model_input(batch).to(device)).double().cpu().numpy())  # (B, D)
            advance(len(batch))
    if not chunks:
        raise ValueError("no images to extract features from")
    return np.concatenate(chunks)
