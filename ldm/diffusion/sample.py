"""ODE sampling of a velocity model from noise (t = 1) to data (t = 0); see `flow.py` for time.

- Time grid: uniform in t, then LightningDiT's shift t' = s·t / (1 + (s − 1)·t) with s = 0.3.
  The reference applies it in its own time τ = 1 − t (τ = 0 is noise), where s < 1 packs the grid
  near τ = 0. We apply the same formula to τ, so `shift=0.3` means what it means in the paper:
  more, smaller steps near noise, larger ones near data. In t it reads t' = t / (s + (1 − s)·t),
  i.e. t / (t + s·(1 − t)): the SD3/FLUX shift 1/s. s = 1 is the uniform grid.
- CFG over all latent channels: v = v_uncond + scale·(v_cond − v_uncond). (The reference guides
  only the first 3 of 32 channels, a DiT leftover; we do not copy that.) Guidance applies only
  while t_low ≤ t ≤ t_high; outside, the conditional velocity alone. The paper's interval (guide
  once its τ ≥ 0.11) is (0.0, 0.89) here. The null class id is `model.num_classes`.
- The tokenizer owns its latent scale and decodes: `sample_images` takes its `decode` as a
  callable, so this package never imports the tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # the config module imports pydantic; sampling only needs the type
    from ldm.config import SampleConfig

Velocity = Callable[[Tensor, float], Tensor]


def shift_time(t: Tensor, shift: float) -> Tensor:
    """LightningDiT's timestep shift in our convention: 0→0, 1→1, monotone; s < 1 favours noise."""
    # = 1 − f(1 − t) with f(τ) = s·τ / (1 + (s − 1)·τ), written so that 0 and 1 map exactly.
    return t / (t + shift * (1 - t))


def time_grid(steps: int, shift: float = 1.0) -> Tensor:
    """(steps + 1,) decreasing times from 1 (noise) to 0 (data), shifted."""
    if steps < 1 or shift <= 0:
        raise ValueError(f"need steps >= 1 and shift > 0, got {steps=}, {shift=}")
    return shift_time(torch.linspace(1, 0, steps + 1, dtype=torch.float64), shift)  # (S+1,)


def euler(velocity: Velocity, x: Tensor, grid: Tensor) -> Tensor:
    """Euler steps of dx/dt = v along the grid; one model call per step."""
    ts = grid.tolist()
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        x = x + (t_next - t) * velocity(x, t)  # (B, C, H, W)
    return x


def heun(velocity: Velocity, x: Tensor, grid: Tensor) -> Tensor:
    """Heun's second-order steps (Euler predictor, trapezoid corrector); two calls per step."""
    ts = grid.tolist()
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        v = velocity(x, t)  # (B, C, H, W)
        x_pred = x + (t_next - t) * v  # (B, C, H, W)
        x = x + (t_next - t) * 0.5 * (v + velocity(x_pred, t_next))  # (B, C, H, W)
    return x


SOLVERS: dict[str, Callable[[Velocity, Tensor, Tensor], Tensor]] = {"euler": euler, "heun": heun}


def guided_velocity(
    model: nn.Module,
    x: Tensor,
    t: float,
    labels: Tensor | None,
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Model velocity at (x, t); CFG on all channels when guiding, as one [cond; uncond] batch."""
    tt = torch.full((x.shape[0],), t, device=x.device)  # (B,)
    t_low, t_high = cfg_interval
    if labels is None or cfg_scale == 1.0 or not t_low <= t <= t_high:
        return model(x, tt, labels)  # (B, C, H, W)
    null = torch.full_like(labels, model.num_classes)  # (B,)
    v = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null]))  # (2B, C, H, W)
    v_cond, v_uncond = v.chunk(2)  # (B, C, H, W) each
    return v_uncond + cfg_scale * (v_cond - v_uncond)  # (B, C, H, W)


@torch.no_grad()
def sample(
    model: nn.Module,
    shape: tuple[int, ...],
    labels: Tensor | None,
    steps: int,
    solver: Literal["euler", "heun"] = "euler",
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] = (0.0, 1.0),
    shift: float = 0.3,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Latents (N, C, H, W) from noise; the same seed gives the same latents at any batch size."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {sorted(SOLVERS)}")
    if labels is None and cfg_scale != 1.0:
        raise ValueError("classifier-free guidance needs labels (the model must be conditional)")
    if labels is not None and labels.shape != (shape[0],):
        raise ValueError(f"labels must have shape ({shape[0]},), got {tuple(labels.shape)}")
    device = next(iter(model.parameters()), torch.empty(0)).device
    # All noise is drawn up front on the generator's device, so batching cannot change it.
    noise = torch.randn(
        shape, generator=generator, device=None if generator is None else generator.device
    )
    grid = time_grid(steps, shift)
    was_training = model.training
    model.eval()  # no label dropout while sampling
    try:
        out = []
        for start in range(0, shape[0], batch_size):
            x = noise[start : start + batch_size].to(device)  # (b, C, H, W)
            y = None if labels is None else labels[start : start + batch_size].to(device)  # (b,)

            def velocity(x: Tensor, t: float, y: Tensor | None = y) -> Tensor:
                return guided_velocity(model, x, t, y, cfg_scale, cfg_interval)

            out.append(SOLVERS[solver](velocity, x, grid))
    finally:
        model.train(was_training)
    return torch.cat(out)  # (N, C, H, W)


@torch.no_grad()
def sample_images(
    model: nn.Module,
    shape: tuple[int, ...],
    labels: Tensor | None,
    settings: SampleConfig,
    generator: torch.Generator,
    decode: Callable[[Tensor], Tensor],
) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1], float on the CPU: latents of `shape` sampled with
    `settings` (guided when there are labels), decoded `settings.batch_size` at a time."""
    scale = settings.cfg_scale if labels is not None else 1.0  # guidance needs labels
    size = settings.batch_size
    z = sample(
        model,
        shape,
        labels,
        settings.steps,
        settings.solver,
        scale,
        tuple(settings.cfg_interval),
        settings.shift,
        generator,
        size,
    )  # (N, C, h, w)
    return torch.cat(
        [decode(z[i : i + size]).float().clamp(-1, 1).cpu() for i in range(0, len(z), size)]
    )  # (N, 3, H, W)
