"""The tokenizer's decoder over many latents, batch by batch, timed where a speed is reported
(the encoder is timed in the diagnostics' pass over the val split, ldm/stages/diagnostics.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
