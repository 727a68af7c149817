"""Two tokenizer regularisers a variant may add to the objective, alone, together or with VF.

- Equivariance (EQ-VAE, Kouzelis et al. 2025; scale-only: Skorokhodov et al. 2025): decoding a
  transformed latent must give the same transform of the image, d(Dec(tau(z)), tau(x)), with tau
  a bilinear downscaling (and a quarter turn) and d the loop's reconstruction loss. A latent
  space that commutes with these transforms is smoother, and easier for the DiT to model.
- Latent denoising (l-DeTok, Yang et al. 2026): the decoder reconstructs the clean image from
  (1 - t)·z + t·gamma·eps, t ~ U(0, 1) per image, so the latents stay decodable under the very
  corruption the DiT undoes; optionally the encoder sees an image with patches blanked.

Every draw here is a function of (seed, step), from generators of its own: a resumed run makes
the same draws as an uninterrupted one, and a variant without these options draws nothing, so
its posterior noise and batches are those of a run before the options existed. Draws are made
for the global batch; a DDP rank takes its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

EQUIVARIANCE_STREAM, DENOISING_STREAM = 1, 2  # apart from each other and from the batches'


def step_generator(seed: int, step: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator seeded from (stream, seed, step) alone, well mixed so that no two streams or
    steps share a seed (the posterior noise's `seed·1_000_003 + step` does not mix)."""
    entropy = [stream, seed % 2**64, step]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) % 2**63)


@dataclass(frozen=True)
class Transform:
    """tau: a bilinear downscaling by `scale`, then `quarter_turns` x 90 degrees."""

    scale: float
    quarter_turns: int

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H·scale, W·scale), turned. Antialiased: a plain bilinear x1/4
        reads 4 of every 16 pixels. In fp32, as the image is: under bf16 autocast the latent
        must still shrink by the same arithmetic as the image it is compared with."""
        if self.scale != 1.0:
            size = [scaled_side(side, self.scale) for side in t.shape[-2:]]
            t = F.interpolate(
                t.float(), size=size, mode="bilinear", align_corners=False, antialias=True
            )
        return torch.rot90(t, self.quarter_turns, dims=(-2, -1)) if self.quarter_turns else t


def scaled_side(side: int, scale: float) -> int:
    """`side·scale`, which must be a whole number of pixels or latent cells, at least one."""
    scaled = side * scale
    if scaled < 1 or abs(scaled - round(scaled)) > 1e-6:
        raise ValueError(f"equivariance.scales: {scale:g} of {side} is not a whole size >= 1")
    return round(scaled)


@dataclass(frozen=True)
class Equivariance:
    """The `equivariance` section as the loop uses it."""

    weight: float
    share: float  # of the steps that add the loss (EQ-VAE's p)
    scales: tuple[float, ...]
    rotations: bool

    def fault(self, latent_side: int) -> str | None:
        """What is wrong with the scales for a latent grid of this side, if anything."""
        for scale in self.scales:
            try:
                scaled_side(latent_side, scale)
            except ValueError as err:
                return f"{err} (the latent grid's side): pick other scales"
        return None

    def draw(self, seed: int, step: int) -> Transform | None:
        """This step's tau, or None when the step does not add the loss (one draw per step: the
        whole batch shares tau, so that it stays one tensor)."""
        g = step_generator(seed, step, EQUIVARIANCE_STREAM, torch.device("cpu"))
        applies, pick, turn = torch.rand(3, generator=g).tolist()
        if applies >= self.share:
            return None
        scale = self.scales[min(int(pick * len(self.scales)), len(self.scales) - 1)]
        return Transform(scale, min(int(turn * 4), 3) if self.rotations else 0)


def equivariance_loss(
    decode: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    x: torch.Tensor,
    transform: Transform,
    rec_loss: Loss,
) -> torch.Tensor:
    """rec_loss(Dec(tau(z)), tau(x)): zero for a decoder that commutes with tau."""
    return rec_loss(decode(transform(z)), transform(x))


@dataclass(frozen=True)
class Corruption:
    """One step's latent-denoising draws for a batch."""

    t: torch.Tensor  # (B,) interpolation weights, U(0, 1)
    eps: torch.Tensor  # (B, d, h, w) standard normal, before the scale gamma
    keep: torch.Tensor | None  # (B, 1, h, w) bool, False on masked cells; None: no masking

    def rows(self, rows: slice) -> Corruption:
        keep = None if self.keep is None else self.keep[rows]
        return Corruption(self.t[rows], self.eps[rows], keep)


@dataclass(frozen=True)
class LatentDenoising:
    """The `latent_denoising` section as the loop uses it."""

    gamma: float
    mask: bool
    mask_ratio: tuple[float, float]  # (low, high) of max(0, U(low, high)), per image

    def draw(
        self, seed: int, step: int, shape: tuple[int, int, int], batch: int, device: torch.device
    ) -> Corruption:
        """This step's draws for the global batch of latents of `shape` (d, h, w)."""
        g = step_generator(seed, step, DENOISING_STREAM, device)
        d, h, w = shape
        t = torch.rand(batch, generator=g, device=device)  # (B,)
        eps = torch.randn((batch, d, h, w), generator=g, device=device)
        keep = None
        if self.mask:
            low, high = self.mask_ratio
            u = torch.rand(batch, generator=g, device=device)
            ratio = (low + (high - low) * u).clamp_min(0.0)  # (B,)
            scores = torch.rand((batch, h * w), generator=g, device=device)
            keep = cell_mask(scores, ratio).view(batch, 1, h, w)
        return Corruption(t, eps, keep)


def noised_latent(
    z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, gamma: float
) -> torch.Tensor:
    """l-DeTok's interpolative noise (1 - t)·z + t·gamma·noise, t (B,) per image."""
    t = t.view(-1, 1, 1, 1).to(z.dtype)
    return (1 - t) * z + t * (gamma * noise)


def cell_mask(scores: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """(B, N) bool, False on round(ratio·N) cells per image: those with the lowest scores."""
    n = scores.shape[1]
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, N): each cell's place in its image's order
    masked = (ratio * n).round().long().view(-1, 1)  # (B, 1)
    return rank >= masked


def masked_input(x: torch.Tensor, keep: torch.Tensor, patch: int) -> torch.Tensor:
    """`x` (B, 3, H, W) with every patch x patch block whose latent cell is not kept set to 0.

    l-DeTok drops a ViT encoder's patch tokens. A convolutional encoder has no tokens to drop,
    so the pixels under a masked latent cell (its f x f block: the cell the encoder's strides
    map it to) are set to 0, mid-grey in [-1, 1], a colour the network can learn to treat as
    "unknown". The cell's latent then has only its neighbours' pixels, through the receptive
    field, to go on: the same task as a masked token inferred from the visible ones.
    """
    pixels = keep.to(x.dtype).repeat_interleave(patch, -2).repeat_interleave(patch, -1)
    return x * pixels  # (B, 3, H, W)
