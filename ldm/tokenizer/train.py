"""The tokenizer's training loop, for every variant: plain, aligned, regularised.

Objective (VQGAN/LDM with VA-VAE's addition and the optional regularisers):
    L = rec + kl_weight·KL [+ w_gan·disc_weight·G] [+ w_vf·vf_weight·(cos_w·L_mcos + dist_w·L_mdms)]
          [+ eq_weight·d(Dec(tau(z)), tau(x))]
where rec = d(Dec(z'), x), d = L1 + perceptual_weight·perceptual, is the "reconstruction" both
adaptive weights are measured against: w_vf on the encoder's last layer (VA-VAE), w_gan on the
decoder's (VQGAN). z is the posterior sample, on which KL and VF are measured; the decoder sees
z' = z, or with latent denoising z' = (1 - t)·z + t·gamma·eps (and the encoder a masked image).
The equivariance term comes on a share of the steps, tau drawn per step
(ldm/tokenizer/regularisers.py).

Every random draw is a function of (seed, step): the batch order and flips (`ImageBatches`), the
posterior noise (a generator seeded per step) and the regularisers' draws (generators of their
own, so a variant without them draws exactly what it drew before they existed). A run resumed
from its last complete checkpoint (weights, optimisers, step, learning-rate schedule) therefore
continues exactly as if never interrupted.

Under DDP (torchrun, one process per GPU) the draws are made for the *global* batch and each rank
takes its slice, every loss is a per-sample mean, and DDP averages the gradients of the model,
the VF projection and the discriminator: the update is that of one process on the global batch.
- The adaptive VF and GAN weights are ratios of gradient norms on one layer. Each rank's own
  gradients give each rank another weight (and DDP would then average differently weighted
  gradients), so the two layer gradients are averaged over the ranks first (one all-reduce of
  that layer each): every rank uses the weight of the global batch, as one process would.
- The PatchGAN's BatchNorm uses SyncBatchNorm on CUDA, so its statistics are the global
  batch's; gloo has no SyncBatchNorm, so on CPU each rank normalises with its own slice.
- Validation checks run on rank 0 while the others wait at a barrier: they are small and run
  every eval_every steps; a distributed version would buy little and cost a gather.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ldm.cost import Clock, Hours
from ldm.data.batches import ImageBatches, to_uint8
from ldm.errors import LdmError
from ldm.tokenizer.align import adaptive_vf_weight, vf_loss
from ldm.tokenizer.discriminator import (
    NLayerDiscriminator,
    adaptive_gan_weight,
    gan_generator_loss,
    hinge_d_loss,
    layers_for,
)
from ldm.tokenizer.losses import reconstruction_loss
from ldm.tokenizer.model import Tokenizer
from ldm.tokenizer.regularisers import (
    Equivariance,
    LatentDenoising,
    equivariance_loss,
    masked_input,
)
from ldm.training.distributed import Dist, all_reduce_mean, barrier, wrap
from ldm.training.resume import (
    NonFiniteLoss,
    carried_hours,
    hours_so_far,
    resume,
    save_resume_point,
)
from ldm.training.schedule import resumed_schedule

if TYPE_CHECKING:  # the config module imports pydantic; the loop only needs the types
    from ldm.config import AlignPhase, TokenizerConfig
    from ldm.progress import Advance
    from ldm.tracker import Tracker

LOG_EVERY = 10  # steps between logged loss points: enough for a curve, few enough for the store
FEATURE_CACHE_BYTES = 2 * 1024**3  # cache foundation features when all of them fit in this


@dataclass
class Alignment:
    """What alignment tuning adds: a frozen foundation model, the projection W, the schedule."""

    foundation: nn.Module
    projection: nn.Module
    phases: list[AlignPhase]  # shares of the steps the run was started with
    cos_margin: float
    distmat_margin: float
    cos_weight: float
    distmat_weight: float
    adaptive_max: float

    def phase(self, step: int, total: int) -> AlignPhase:
        """The phase `step` falls in, the shares being of `total` steps (the run's first
        length, so that an extended run keeps its boundaries); later steps are in the last."""
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
    dist: Dist = field(default_factory=Dist)
    history: dict[str, float] = field(default_factory=dict)
    discriminator: nn.Module | None = None  # set by fit when tokenizer.disc_weight > 0
    clock: Clock = field(default_factory=Clock)  # this attempt's hours: the stage starts it
    carried: Hours | None = None  # set by fit: the earlier attempts' hours, when it resumed
    equivariance: Equivariance | None = None  # for variants with equivariance: true
    latent_denoising: LatentDenoising | None = None  # for variants with latent_denoising: true


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


def _rank_slice(run: TrainRun) -> slice:
    share = run.cfg.batch_size // run.dist.world_size
    return slice(run.dist.rank * share, (run.dist.rank + 1) * share)


def fit(run: TrainRun, tracker: Tracker, progress: Advance) -> dict[str, float]:
    """Train `run.model` in place for `run.steps` steps (resuming if it can); return metrics."""
    cfg, device, model, align, dist = run.cfg, run.device, run.model, run.alignment, run.dist
    cuda = device.type == "cuda"
    if cfg.batch_size % dist.world_size:
        raise LdmError(
            f"tokenizer.batch_size {cfg.batch_size} must be a multiple of tokenizer.world_size "
            f"{dist.world_size}: every rank takes an equal slice of the global batch"
        )
    eq, denoise = run.equivariance, run.latent_denoising
    if eq is not None and (fault := eq.fault(model.latent_shape[-1])):
        raise LdmError(fault)
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
    disc = disc_net = None
    if cfg.disc_weight > 0:
        disc = NLayerDiscriminator(n_layers=layers_for(model.arch.resolution))
        if dist.world_size > 1 and cuda:  # the same parameters, BatchNorm over the global batch
            disc = nn.SyncBatchNorm.convert_sync_batchnorm(disc)
        disc = run.discriminator = modules["disc"] = disc.to(device)
        optimizers["d"] = torch.optim.AdamW(
            disc.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0
        )
    saved = {f"optimizer_{name}": optimizer for name, optimizer in optimizers.items()}
    state = resume(
        run.work_dir, run.identity, run.settings, run.steps, run.notice, dist, modules, saved
    )
    start = 0 if state is None else int(state["step"])
    if state is not None:
        run.history["resumed_from_step"] = float(start)
    run.carried = carried_hours(state)
    schedule = resumed_schedule(
        cfg.lr, cfg.lr_schedule, cfg.warmup_steps, run.steps, state, "tokenizer.steps"
    )
    progress(start, already_done=True)

    # DDP broadcasts rank 0's weights here, and its buffers before every forward (the
    # discriminator's BatchNorm statistics follow rank 0's).
    net = wrap(model, dist, device)
    forward = torch.compile(net) if cfg.compile and cuda else net
    projection = wrap(align.projection, dist, device) if align is not None else None
    if disc is not None:
        disc_net = wrap(disc, dist, device)
    reduce = all_reduce_mean if dist.world_size > 1 else None
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if cfg.precision == "bf16" and cuda
        else contextlib.nullcontext()
    )
    features = None
    if align is not None:
        grid = model.latent_shape[1:]
        features = FeatureCache(align.foundation, grid, run.batches, cfg.batch_size)
    mine = _rank_slice(run)

    def rec_loss(recon: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        side = model.arch.resolution
        return reconstruction_loss(recon, x, run.perceptual, cfg.perceptual_weight, side)

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}  # steps behind each sum: the equivariance term skips some
    images_seen, clock = 0, time.perf_counter()
    final_loss = float("nan")
    for step in range(start, run.steps):
        lr = schedule.rate(step)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        keys = run.batches.keys(step)[mine]  # (S,) this rank's slice of the global batch
        x = run.batches.pictures(keys).to(device, non_blocking=True)  # (S, 3, H, W)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        g = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
        shape = (cfg.batch_size, *model.latent_shape)
        noise = torch.randn(shape, generator=g, device=device)[mine]  # (S, d, h, w)
        x_in, corrupt = x, {}
        if denoise is not None:
            c = denoise.draw(cfg.seed, step, model.latent_shape, cfg.batch_size, device).rows(mine)
            corrupt = {"latent_noise": (c.t, denoise.gamma * c.eps)}
            if c.keep is not None:
                x_in = masked_input(x, c.keep, model.arch.downsample)  # (S, 3, H, W)
        tau = eq.draw(cfg.seed, step) if eq is not None else None
        with autocast:
            recon, posterior, z = forward(x_in, sample=True, noise=noise, **corrupt)
            rec, l1, perceptual = rec_loss(recon, x)
            kl = posterior.kl().mean()
            loss = rec + cfg.kl_weight * kl
            logged = {"train/l1": l1, "train/perceptual": perceptual, "train/kl": kl}
            if tau is not None:
                # The bare decoder, as for the GAN: DDP's hooks still average its gradients.
                eq_loss = equivariance_loss(
                    model.decoder, z, x, tau, lambda r, t: rec_loss(r, t)[0]
                )
                loss = loss + eq.weight * eq_loss
                logged["train/eq"] = eq_loss
            if denoise is not None:
                logged["train/denoise_t"] = c.t.mean()
                if c.keep is not None:
                    logged["train/masked"] = 1 - c.keep.float().mean()
            if align is not None:
                phase = align.phase(step, schedule.first_horizon)
                margins = (align.cos_margin, align.distmat_margin) if phase.use_margins else (0, 0)
                target = features(x, keys)  # (S, C_f, h, w)
                vf, _ = vf_loss(
                    projection(z.float()),
                    target,
                    *margins,
                    align.cos_weight,
                    align.distmat_weight,
                )
                w_vf = adaptive_vf_weight(
                    rec, vf, model.encoder.conv_out.weight, align.adaptive_max, reduce
                )
                loss = loss + phase.vf_weight * w_vf * vf
                logged |= {"train/vf": vf, "train/vf_adaptive_weight": w_vf}
            if disc is not None and step >= cfg.disc_start:
                # The bare module: DDP syncs the discriminator's gradients in its own step only.
                g_loss = gan_generator_loss(disc(recon))
                w_gan = adaptive_gan_weight(
                    rec, g_loss, model.decoder.conv_out.weight, reduce=reduce
                )
                loss = loss + cfg.disc_weight * w_gan * g_loss
                logged |= {"train/gan_g": g_loss, "train/gan_adaptive_weight": w_gan}
        # Every rank stops together: a NaN on one rank makes the mean NaN on all.
        global_loss = all_reduce_mean(loss.detach().float().clone())
        if not torch.isfinite(global_loss):
            raise NonFiniteLoss.at(
                step,
                f"the loss is {global_loss.item()}",
                run.work_dir,
                "lower tokenizer.lr or raise warmup_steps",
            )
        optimizers["g"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["g"].step()
        if disc is not None and step >= cfg.disc_start:
            with autocast:
                d_loss = hinge_d_loss(disc_net(x), disc_net(recon.detach()))
            optimizers["d"].zero_grad(set_to_none=True)
            d_loss.backward()
            optimizers["d"].step()
            logged["train/gan_d"] = d_loss

        logged["train/loss"] = loss
        for key, value in logged.items():  # this rank's sums; averaged over ranks when logged
            sums[key] = sums.get(key, 0.0) + value.detach().float()
            counts[key] = counts.get(key, 0) + 1
        images_seen += cfg.batch_size
        done = step + 1
        if done % LOG_EVERY == 0 or done == run.steps:
            totals = all_reduce_mean(torch.stack([v.to(device) for v in sums.values()]))
            steps = torch.tensor([counts[key] for key in sums], dtype=totals.dtype, device=device)
            means = dict(zip(sums, (totals / steps).tolist(), strict=True))
            tracker.log_metrics(means | {"train/lr": lr}, step=done)
            final_loss = means["train/loss"]
            sums, counts = {}, {}
        if done % cfg.eval_every == 0 or done == run.steps:
            if dist.is_main:
                _check_and_show(run, tracker, done)
            barrier()
        # The last step is saved too, so that raising the steps later extends this run.
        if done % cfg.checkpoint_every == 0 or done == run.steps:
            hours = hours_so_far(run.clock, run.carried, dist, device)  # every rank: a sum
            if dist.is_main:
                save_resume_point(
                    run.work_dir,
                    done,
                    run.identity,
                    run.settings,
                    modules,
                    saved,
                    {"schedule": schedule.state(), "hours": hours.state()},
                )
            barrier()  # a rank killed after this step resumes from the state just written
        progress(1, loss=final_loss)
    seconds = time.perf_counter() - clock
    # A summary only: the curves were logged step by step above.
    run.history["train/images_per_second"] = images_seen / seconds if seconds > 0 else 0.0
    run.history["train/steps"] = float(run.steps)
    run.history["train/final_loss"] = final_loss
    return dict(run.history)


def _check_and_show(run: TrainRun, tracker: Tracker, done: int) -> None:
    """Validation losses and a reconstruction grid of the fixed val images."""
    checks, recon_val = validation_check(run.model, run.val_images, run.device, run.cfg.batch_size)
    tracker.log_metrics(checks, step=done)
    # Evenly spread over the val split, which is ordered by class: every class shows.
    shown = torch.linspace(0, len(run.val_images) - 1, run.cfg.grid_images).round().long()
    shown = shown.unique()
    tracker.log_image(
        reconstruction_grid(run.val_images[shown], recon_val[shown]),
        key="reconstructions",
        step=done,
    )
