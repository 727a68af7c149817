"""Rectified flow: the interpolant, the velocity target, time sampling and the loss.

Time convention (the one used everywhere in `ldm`): t = 0 is data, t = 1 is noise,

    x_t = (1 − t)·x0 + t·ε,    target velocity v = dx_t/dt = ε − x0,

so a sampler integrates dx/dt = v from t = 1 down to t = 0 (minRF, REPA, FLUX). LightningDiT's
code uses the mirrored SiT convention (t = 0 noise); its time-dependent settings are converted
where they are used (the shift and the CFG interval in `sample.py`; a non-zero logit-normal mean
would change sign).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_t(
    batch: int,
    kind: Literal["uniform", "logit_normal"],
    generator: torch.Generator | None = None,
    mean: float = 0.0,
    std: float = 1.0,
) -> Tensor:
    """Training times (B,) in [0, 1]: uniform, or logit-normal (SD3) which favours mid times."""
    device = generator.device if generator is not None else None
    if kind == "uniform":
        return torch.rand(batch, generator=generator, device=device)  # (B,)
    if kind == "logit_normal":
        z = torch.randn(batch, generator=generator, device=device)  # (B,)
        return torch.sigmoid(mean + std * z)  # (B,)
    raise ValueError(f"unknown time sampling {kind!r}; use 'uniform' or 'logit_normal'")


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 − t)·x0 + t·ε, with one t per sample."""
    t = t.view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1)
    return torch.lerp(x0, noise, t)  # (B, C, H, W)


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """v = dx_t/dt = ε − x0."""
    return noise - x0  # (B, C, H, W)


def flow_loss(pred: Tensor, target: Tensor, cos_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Mean and per-sample (B,) loss: MSE + cos_weight·(1 − cosine of pred and target velocity).

    The direction term (FasterDiT, on in LightningDiT with weight 1) is LightningDiT's: the cosine
    is taken over channels at each latent position, then averaged over positions. Per-sample
    values let the caller bin the loss by t.
    """
    per_sample = (pred - target).square().flatten(1).mean(1)  # (B,)
    if cos_weight:
        cos = F.cosine_similarity(pred, target, dim=1)  # (B, H, W)
        per_sample = per_sample + cos_weight * (1 - cos).flatten(1).mean(1)  # (B,)
    return per_sample.mean(), per_sample
