"""The convergence curve: a cheap FD of EMA samples, measured while the DiT trains.

The paper's main claim is that an aligned tokenizer makes the DiT converge faster, so a trial
records gFD against training step and compute for every variant. The samples are drawn from
fixed noise with class-balanced labels, so successive points differ by the model alone. The
sample count is small (`diffusion.curve_samples`): the curve shows the trend; the `evaluate`
stage measures the final model properly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ldm.diffusion.sample import sample_images

if TYPE_CHECKING:
    from ldm.config import SampleConfig


class ConvergenceProbe:
    def __init__(
        self,
        score: Callable[[Tensor], float],  # images in [-1, 1] (N, 3, H, W) -> FD vs the val split
        metric: str,  # the logged name, e.g. "curve/fd_effnet_lite2"
        num_samples: int,
        num_classes: int,  # 0: an unconditional model
        latent_shape: tuple[int, int, int],
        sample_cfg: SampleConfig,
        decode: Callable[[Tensor], Tensor],
        device: torch.device,
    ) -> None:
        self.score, self.metric, self.decode, self.device = score, metric, decode, device
        self.shape = (num_samples, *latent_shape)
        self.labels = torch.arange(num_samples) % num_classes if num_classes else None
        self.sample_cfg = sample_cfg
        self.points: list[dict[str, float]] = []

    @torch.no_grad()
    def __call__(self, ema: nn.Module, step: int, compute_hours: float) -> float:
        """The FD of `ema`'s samples after `step` steps, recorded as a point of the curve."""
        labels = None if self.labels is None else self.labels.to(self.device)
        noise = torch.Generator(self.device).manual_seed(self.sample_cfg.seed)
        images = sample_images(ema, self.shape, labels, self.sample_cfg, noise, self.decode)
        fd = float(self.score(images))
        self.points = [p for p in self.points if p["step"] < step]  # a rollback repeats steps
        self.points.append({"step": step, "compute_hours": compute_hours, "fd": fd})
        return fd

    def state(self) -> str:
        """The curve so far, for a resume point (plain JSON: checkpoints hold no pickles)."""
        return json.dumps(self.points)

    def load(self, text: str) -> None:
        self.points = json.loads(text)
