"""The convergence curve: a cheap FD of EMA samples, measured while the DiT trains.

The paper's main claim is that an aligned tokenizer makes the DiT converge faster, so a trial
records gFD against training step and compute for every variant. The samples are drawn from
fixed noise with class-balanced labels, so successive points differ by the model alone. The
sample count is small (`diffusion.curve_samples`): the curve shows the trend; the `evaluate`
stage measures the final model properly. Each point carries its bootstrap interval, and the
curve its own floor at the same sample count: an FD of few rows reads high, so the points
compare only with numbers of as many rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from ldm.diffusion.sample import sample_images
from ldm.metrics.bootstrap import Resampling, bootstrap_fd
from ldm.metrics.frechet import as_features

if TYPE_CHECKING:
    from ldm.config import SampleConfig


class ConvergenceProbe:
    def __init__(
        self,
        features: Callable[[Tensor], np.ndarray],  # images in [-1, 1] (N, 3, H, W) -> (N, D)
        reference: np.ndarray,  # (M, D): the val split's rows, in the same network
        resampling: Resampling,  # each point's bootstrap interval
        floor: float,  # the FD a perfect generator reads at num_samples rows (the curve's floor)
        metric: str,  # the logged name, e.g. "curve/fd_effnet_lite2"
        num_samples: int,
        num_classes: int,  # 0: an unconditional model
        latent_shape: tuple[int, int, int],
        sample_cfg: SampleConfig,
        decode: Callable[[Tensor], Tensor],
        device: torch.device,
    ) -> None:
        self.features, self.metric, self.decode, self.device = features, metric, decode, device
        self.reference, self.resampling, self.floor = as_features(reference), resampling, floor
        self.shape = (num_samples, *latent_shape)
        self.labels = torch.arange(num_samples) % num_classes if num_classes else None
        self.sample_cfg = sample_cfg
        # {step, compute_hours, fd, fd_lo, fd_hi}; points of a resumed older run lack the last two
        self.points: list[dict[str, float]] = []

    @torch.no_grad()
    def __call__(self, ema: nn.Module, step: int, compute_hours: float) -> float:
        """The FD of `ema`'s samples after `step` steps, recorded with its bootstrap interval as
        a point of the curve."""
        labels = None if self.labels is None else self.labels.to(self.device)
        noise = torch.Generator(self.device).manual_seed(self.sample_cfg.seed)
        images = sample_images(ema, self.shape, labels, self.sample_cfg, noise, self.decode)
        # the same resampling seed at every point: the band's wiggle is the model's, not the
        # draws'
        estimate = bootstrap_fd(self.reference, self.features(images), self.resampling)
        self.points = [p for p in self.points if p["step"] < step]  # a rollback repeats steps
        self.points.append(
            {
                "step": step,
                "compute_hours": compute_hours,
                "fd": estimate.point,
                # the bias shift can carry the low end below 0, which no FD reaches
                "fd_lo": max(estimate.lo, 0.0),
                "fd_hi": estimate.hi,
            }
        )
        return estimate.point

    def state(self) -> str:
        """The curve so far, for a resume point (plain JSON: checkpoints hold no pickles)."""
        return json.dumps(self.points)

    def load(self, text: str) -> None:
        self.points = json.loads(text)
