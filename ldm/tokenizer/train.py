"""The tokenizer's training loop, for plain and aligned variants alike.

Objective (VQGAN/LDM with VA-VAE's addition):
    L = rec + kl_weight·KL [+ w_gan·disc_weight·G] [+ w_vf·vf_weight·(cos_w·L_mcos + dist_w·L_mdms)]
where rec = L1 + perceptual_weight·perceptual is the "reconstruction" both adaptive weights are
measured against: w_vf on the encoder's last layer (VA-VAE), w_gan on the decoder's (VQGAN).

Every random draw is a function of (seed, step): the batch order and flips (`ImageBatches`) and
the posterior noise (a generator seeded per step). A run resumed from its last complete
checkpoint (weights, optimisers, step) therefore continues exactly as if never interrupted.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ldm import checkpoint
from ldm.align import adaptive_vf_weight, vf_loss
from ldm.config import AlignPhase, TokenizerConfig
from ldm.data.batches import ImageBatches, to_uint8
from ldm.errors import LdmError
from ldm.tokenizer.discriminator import (
    NLayerDiscriminator,
    adaptive_gan_weight,
    gan_generator_loss,
    hinge_d_loss,
)
from ldm.tokenizer.model import Tokenizer
from ldm.tracking import Tracker

LOG_EVERY = 10  # steps between logged loss points: enough for a curve, few enough for the store
FEATURE_CACHE_BYTES = 2 * 1024**3  # cache foundation features when all of them fit in this


class NonFiniteLoss(LdmError):
    """Training diverged; the message names the last good checkpoint."""


@dataclass
class Alignment:
    """What alignment tuning adds: a frozen foundation model, the projection W, the schedule."""

    foundation: nn.Module
    projection: nn.Module
    phases: list[AlignPhase]  # shares of the run's steps
    cos_margin: float
    distmat_margin: float
    cos_weight: float
    distmat_weight: float
    adaptive_max: float

    def phase(self, step: int, total: int) -> AlignPhase:
        """The phase `step` of a `total`-step run falls in."""
        end = 0.0
        for phase in self.phases:
            end += phase.share
            if step < round(end * total):
                return phase
        return self.phases[-1]


class FeatureCache:
    """Foundation features per training picture, computed once when they all fit in memory.

    The foundation model is frozen and its input is fixed per picture (image + flip), so the
    features of an epoch are the same as those of the last one; on a CPU they cost more than
    the tokenizer's own step. They are computed in fixed groups of consecutive keys, never for
    "whatever this batch lacks": a convolution's last bits depend on the batch it ran in, and a
    resumed run must see exactly the features the uninterrupted one saw.
    """

    def __init__(
        self, foundation: nn.Module, grid: tuple[int, int], batches: ImageBatches, group: int
    ) -> None:
        self.foundation, self.grid, self.batches, self.group = foundation, grid, batches, group
        self.n_keys = 2 * len(batches.images)  # every picture, plain and mirrored
        per_entry = foundation.feature_dim * grid[0] * grid[1] * 2  # float16
        self.enabled = self.n_keys * per_entry <= FEATURE_CACHE_BYTES
        self.store: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.foundation(x, self.grid).float()
        for first in sorted({k - k % self.group for k in keys.tolist() if k not in self.store}):
            group = torch.arange(first, min(first + self.group, self.n_keys))
            pictures = self.batches.pictures(group).to(x.device)
            computed = self.foundation(pictures, self.grid).half().cpu()  # (G, C, h, w)
            self.store.update(zip(group.tolist(), computed, strict=True))
        return torch.stack([self.store[int(k)] for k in keys.tolist()]).to(x.device).float()


@dataclass
class TrainRun:
    """Everything one training run needs; built by the stage from config and files."""

    model: Tokenizer
    cfg: TokenizerConfig
    steps: int
    batches: ImageBatches
    val_images: torch.Tensor  # (N, 3, H, W) in [-1, 1], a fixed set for in-training checks
    perceptual: nn.Module | None
    alignment: Alignment | None
    work_dir: Path  # resume points live here
    identity: dict[str, Any]  # what the saved state means: a change makes it unusable
    settings: dict[str, Any]  # everything else; a run resumes across changes to these
    device: torch.device
    notice: Callable[[str], None] = print  # one-line messages for the person watching
    history: dict[str, float] = field(default_factory=dict)


def learning_rate(cfg: TokenizerConfig, step: int, total: int) -> float:
    """Linear warm-up, then constant or cosine decay to 10 %."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    progress = max(0.0, step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def reconstruction_grid(originals: torch.Tensor, recons: torch.Tensor) -> np.ndarray:
    """Originals in the top row, their reconstructions below: uint8 (2H, N·W, 3)."""
    top, bottom = to_uint8(originals), to_uint8(recons)  # (N, H, W, 3) each
    return np.concatenate([np.concatenate(list(top), 1), np.concatenate(list(bottom), 1)], 0)


@torch.no_grad()
def validation_check(
    model: Tokenizer, images: torch.Tensor, device: torch.device, batch_size: int
) -> tuple[dict[str, float], torch.Tensor]:
    """Mean L1 and PSNR of deterministic reconstructions (posterior mode) of `images`."""
    model.eval()
    recons = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        recons.append(model.decode_raw(model.posterior(x).mode()).float().cpu())
    model.train()
    recon = torch.cat(recons)
    mse = ((recon.clamp(-1, 1) - images) / 2).pow(2).flatten(1).mean(1)  # on the [0, 1] scale
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()
    return {"val/l1": (recon - images).abs().mean().item(), "val/psnr": psnr.item()}, recon


def _resume(
    run: TrainRun, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> int:
    found = checkpoint.find_resume_point(
        run.work_dir, run.identity, run.settings, run.steps, run.notice
    )
    if found is None:
        return 0
    folder, state = found
    checkpoint.load_state(folder, modules)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state[f"optimizer_{name}"])
    run.history["resumed_from_step"] = float(state["step"])
    return int(state["step"])


def fit(run: TrainRun, tracker: Tracker, progress: Callable[[int], None]) -> dict[str, float]:
    """Train `run.model` in place for `run.steps` steps (resuming if it can); return metrics."""
    cfg, device, model, align = run.cfg, run.device, run.model, run.alignment
    cuda = device.type == "cuda"
    model.to(device).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    trained = list(model.parameters())
    modules: dict[str, nn.Module] = {"model": model}
    if align is not None:
        align.foundation.to(device)
        modules["projection"] = align.projection.to(device)
        trained += list(align.projection.parameters())
    optimizers = {"g": torch.optim.AdamW(trained, lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)}
    disc = None
    if cfg.disc_weight > 0:
        disc = modules["disc"] = NLayerDiscriminator().to(device)
        optimizers["d"] = torch.optim.AdamW(
            disc.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0
        )
    start = _resume(run, modules, optimizers)
    progress(start)

    forward = torch.compile(model) if cfg.compile and cuda else model
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if cfg.precision == "bf16" and cuda
        else contextlib.nullcontext()
    )
    features = None
    if align is not None:
        grid = model.latent_shape[1:]
        features = FeatureCache(align.foundation, grid, run.batches, cfg.batch_size)
    sums: dict[str, float] = {}
    window, images_seen, clock = 0, 0, time.perf_counter()
    final_loss = float("nan")
    for step in range(start, run.steps):
        lr = learning_rate(cfg, step, run.steps)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        x, _, keys = run.batches.batch(step)
        x = x.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        noise = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
        with autocast:
            recon, posterior, z = forward(x, sample=True, generator=noise)
            l1 = (recon.float() - x).abs().mean()
            perceptual = run.perceptual(recon, x).mean() if run.perceptual else torch.zeros(())
            rec = l1 + cfg.perceptual_weight * perceptual.to(l1.device)
            kl = posterior.kl().mean()
            loss = rec + cfg.kl_weight * kl
            logged = {"train/l1": l1, "train/perceptual": perceptual, "train/kl": kl}
            if align is not None:
                phase = align.phase(step, run.steps)
                margins = (align.cos_margin, align.distmat_margin) if phase.use_margins else (0, 0)
                target = features(x, keys)  # (B, C_f, h, w)
                vf, _ = vf_loss(
                    align.projection(z.float()),
                    target,
                    *margins,
                    align.cos_weight,
                    align.distmat_weight,
                )
                w_vf = adaptive_vf_weight(
                    rec, vf, model.encoder.conv_out.weight, align.adaptive_max
                )
                loss = loss + phase.vf_weight * w_vf * vf
                logged |= {"train/vf": vf, "train/vf_adaptive_weight": w_vf}
            if disc is not None and step >= cfg.disc_start:
                g_loss = gan_generator_loss(disc(recon))
                w_gan = adaptive_gan_weight(rec, g_loss, model.decoder.conv_out.weight)
                loss = loss + cfg.disc_weight * w_gan * g_loss
                logged |= {"train/gan_g": g_loss, "train/gan_adaptive_weight": w_gan}
        if not torch.isfinite(loss):
            last = checkpoint.latest_state(run.work_dir)
            raise NonFiniteLoss(
                f"step {step}: the loss is {loss.item()}; training stopped. The "
                f"last good checkpoint is {last or '(none yet)'}; lower "
                "tokenizer.lr or raise warmup_steps, then run again to resume."
            )
        optimizers["g"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["g"].step()
        if disc is not None and step >= cfg.disc_start:
            with autocast:
                d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
            optimizers["d"].zero_grad(set_to_none=True)
            d_loss.backward()
            optimizers["d"].step()
            logged["train/gan_d"] = d_loss

        logged["train/loss"] = loss
        for key, value in logged.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        window += 1
        images_seen += x.shape[0]
        done = step + 1
        if done % LOG_EVERY == 0 or done == run.steps:
            means = {k: v / window for k, v in sums.items()}
            tracker.log_metrics(means | {"train/lr": lr}, step=done)
            final_loss = means["train/loss"]
            sums, window = {}, 0
        if done % cfg.eval_every == 0 or done == run.steps:
            checks, recon_val = validation_check(model, run.val_images, device, cfg.batch_size)
            tracker.log_metrics(checks, step=done)
            # Evenly spread over the val split, which is ordered by class: every class shows.
            shown = torch.linspace(0, len(run.val_images) - 1, cfg.grid_images).round().long()
            shown = shown.unique()
            tracker.log_image(
                reconstruction_grid(run.val_images[shown], recon_val[shown]),
                key="reconstructions",
                step=done,
            )
        # The last step is saved too, so that raising the steps later extends this run.
        if done % cfg.checkpoint_every == 0 or done == run.steps:
            states = {f"optimizer_{k}": o.state_dict() for k, o in optimizers.items()}
            meta = checkpoint.resume_metadata(run.identity, run.settings)
            checkpoint.save_state(run.work_dir, done, modules, {**states, **meta})
        progress(1, loss=final_loss)
    seconds = time.perf_counter() - clock
    # A summary only: the curves were logged step by step above.
    run.history["train/images_per_second"] = images_seen / seconds if seconds > 0 else 0.0
    run.history["train/steps"] = float(run.steps)
    run.history["train/final_loss"] = final_loss
    return dict(run.history)
