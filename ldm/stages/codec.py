"""The tokenizer's decoder over normalised latents: one batch at a time, so that evaluating
50,000 samples at 256 px never holds their pixels at once (the encoder is timed in the
diagnostics' pass over the val split, ldm/stages/diagnostics.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def decode_batch(tokenizer: Any, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], on the CPU, of one batch of normalised latents."""
    import torch

    with torch.no_grad():
        return tokenizer.decode(latents).clamp(-1, 1).cpu()


class DecodedLatents:
    """Latents read as images: a slice of rows decodes those rows, and nothing is kept. With
    `ldm.metrics.extract.batches_of` it feeds a feature network batch by batch."""

    def __init__(self, tokenizer: Any, latents: torch.Tensor) -> None:
        self.tokenizer, self.latents = tokenizer, latents

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return decode_batch(self.tokenizer, self.latents[rows])  # (b, 3, H, W)
