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

from ldm.diffusion.sample import sample

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
        sc = self.sample_cfg
        labels = None if self.labels is None else self.labels.to(self.device)
        scale = sc.cfg_scale if labels is not None else 1.0  # guidance needs labels
        noise = torch.Generator(self.device).manual_seed(sc.seed)
        z = sample(
            ema,
            self.shape,
            labels,
            sc.steps,
            sc.solver,
            scale,
            tuple(sc.cfg_interval),
            sc.shift,
            noise,
            sc.batch_size,
        )  # (N, C, h, w)
        images = torch.cat(
            [
                self.decode(z[i : i + sc.batch_size]).float().clamp(-1, 1).cpu()
                for i in range(0, len(z), sc.batch_size)
            ]
        )  # (N, 3, H, W)
        fd = float(self.score(images))
        self.points = [p for p in self.points if p["step"] < step]  # a rollback repeats steps
        self.points.append({"step": step, "compute_hours": compute_hours, "fd": fd})
        return fd

    def state(self) -> str:
        """The curve so far, for a resume point (plain JSON: checkpoints hold no pickles)."""
        return json.dumps(self.points)

    def load(self, text: str) -> None:
        self.points = json.loads(text)
