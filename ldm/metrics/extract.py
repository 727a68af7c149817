"""Features of many images, batch by batch: only one batch of pixels is in memory at a time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ldm.data.batches import to_model_range
from ldm.pretrained.base import FeatureNet
from ldm.progress import progress_bar

ImageBatch = np.ndarray | torch.Tensor


def batches_of(images: ImageBatch, batch_size: int) -> list[ImageBatch]:
    """`images` cut into batches of `batch_size`; slices, so a memory-mapped split stays on disk."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [images[start : start + batch_size] for start in range(0, len(images), batch_size)]


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


@torch.no_grad()
def extract_features(
    net: FeatureNet, batches: Iterable[ImageBatch], device: torch.device | None = None
) -> np.ndarray:
    """(N, net.dim) float64 features of all images in `batches`, in order, with progress.

    Each batch is uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1]; it is moved to `device`
    (default: where the net's weights are). A list of batches gives a progress bar with a total.
    """
    if device is None:
        device = next(net.parameters()).device
    total = sum(len(b) for b in batches) if isinstance(batches, Sequence) else None
    chunks = []
    with progress_bar(f"{net.name} features", total) as advance:
        for batch in batches:
            chunks.append(net(model_input(batch).to(device)).double().cpu().numpy())  # (B, D)
            advance(len(batch))
    if not chunks:
        raise ValueError("no images to extract features from")
    return np.concatenate(chunks)
