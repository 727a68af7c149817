"""The tokenizer over many latents or images, batch by batch, timed where a speed is reported."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch


def decoded(tokenizer: Any, latents: torch.Tensor, batch: int, timed: bool = False) -> Any:
    """Images in [-1, 1] (a list of CPU batches) of normalised latents; with the seconds
    decoding took when `timed`."""
    import torch

    images, started = [], time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(latents), batch):
            images.append(tokenizer.decode(latents[start : start + batch]).clamp(-1, 1).cpu())
    return (images, time.perf_counter() - started) if timed else images


def time_encoding(tokenizer: Any, images: np.ndarray, batch: int, device: torch.device) -> float:
    import torch

    from ldm.data.batches import to_model_range

    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            tokenizer.encode(to_model_range(images[start : start + batch]).to(device))
    return time.perf_counter() - started
