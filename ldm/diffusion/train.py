"""LightningDiT's training loop on cached latents: rectified flow, EMA, DDP, exact resume.

- Every draw of step k (batch order, t, noise, label dropout) comes from (seed, k) and is made
  for the whole *global* batch; each rank and micro-batch takes its slice. Resumed, accumulating
  and DDP runs thus see exactly the samples and noise of one uninterrupted single-process run.
- Label dropout for CFG is drawn here: the model's own (global-RNG) dropout is off during fit.
- Each micro-batch's mean loss is divided by the micro-batches per rank and DDP averages over
  ranks, so the gradient is that of the mean loss over the global batch.
- A non-finite loss or gradient on any rank stops every rank, or rolls all back to the last
  resume point and skips that step's batch (`on_non_finite: rollback`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ldm.cost import Clock, Hours
from ldm.data.batches import to_uint8
from ldm.diffusion.flow import flow_loss, interpolate, sample_t, velocity_target
from ldm.diffusion.model import LightningDiT
from ldm.diffusion.probe import ConvergenceProbe
from ldm.diffusion.sample import sample_images
from ldm.errors import LdmError
from ldm.seeds import stream_seed
from ldm.training import checkpoint
from ldm.training.distributed import Dist, all_reduce_mean, barrier, wrap
from ldm.training.resume import (
    NonFiniteLoss,
    carried_hours,
    hours_so_far,
    resume,
    save_resume_point,
)
from ldm.training.schedule import resumed_schedule

if TYPE_CHECKING:  # the config module imports pydantic and yaml; the loop only needs the types
    from ldm.config import DiffusionConfig, SampleConfig
    from ldm.data.latents import LatentRows
    from ldm.progress import Advance
    from ldm.tracker import Tracker

LOG_EVERY = 10  # steps between logged points
T_BINS = 10  # the loss is also logged per t in [0, 0.1), [0.1, 0.2), ... : where the model errs
GRID_IMAGES, GRID_COLUMNS = 16, 8  # the logged sample grid: 2 rows of 8
MAX_ROLLBACKS = 10  # a run that keeps diverging after this many rollbacks is stopped


@dataclass
class DiffusionRun:
    """Everything one diffusion training run needs; built by the stage from config and files."""

    model: LightningDiT
    cfg: DiffusionConfig
    sample_cfg: SampleConfig
    # (N, C, h, w) float, normalised with the tokenizer's statistics; a tensor or a reader of
    # shards that gives a tensor for a tensor of indices
    latents: Tensor | LatentRows
    labels: Tensor  # (N,) long class ids
    num_classes: int
    work_dir: Path  # resume points live here
    identity: dict[str, Any]  # what the saved state means: a change makes it unusable
    settings: dict[str, Any]  # everything else; a run resumes across changes to these
    device: torch.device
    notice: Callable[[str], None] = print  # one-line messages for the person watching
    dist: Dist = field(default_factory=Dist)
    decode: Callable[[Tensor], Tensor] | None = None  # latents -> images (B, 3, H, W) in [-1, 1]
    history: dict[str, float] = field(default_factory=dict)
    ema: nn.Module | None = None  # set by fit_diffusion on rank 0: the weights later stages use
    probe: ConvergenceProbe | None = None  # the convergence curve, measured at sample steps
    clock: Clock = field(default_factory=Clock)  # this attempt's hours: the stage starts it
    carried: Hours | None = None  # set by fit_diffusion: the earlier attempts' hours, if resumed


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(seed, epoch, 0)))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Global batch `step`: positions step·B … (step+1)·B − 1 of a fresh permutation per epoch."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)  # (B,)
    epochs = pos // n
    out = torch.empty_like(pos)
    for epoch in epochs.unique().tolist():
        hit = epochs == epoch
        out[hit] = _epoch_order(n, seed, epoch)[pos[hit] % n]
    return out  # (B,)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)


def sample_grid(model: nn.Module, run: DiffusionRun) -> np.ndarray:
    """EMA samples for fixed noise and labels cycling over the classes: uint8 (rows·H, 8·W, 3)."""
    net = checkpoint.unwrap(model)
    labels = torch.arange(GRID_IMAGES) % run.num_classes if run.num_classes else None
    shape = (GRID_IMAGES, net.latent_channels, net.latent_size, net.latent_size)
    noise = torch.Generator(run.device).manual_seed(run.sample_cfg.seed)
    images = sample_images(model, shape, labels, run.sample_cfg, noise, run.decode)
    images = to_uint8(images)  # (n, H, W, 3)
    n, h, w, _ = images.shape
    rows = images.reshape(n // GRID_COLUMNS, GRID_COLUMNS, h, w, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(rows.reshape(n // GRID_COLUMNS * h, GRID_COLUMNS * w, 3))


def _rank_batch(
    run: DiffusionRun, step: int, drop_rate: float
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """This rank's share of global batch `step`: latents, labels (dropped → null), t, noise."""
    cfg, device, rank = run.cfg, run.device, run.dist.rank
    share = cfg.batch_size // run.dist.world_size
    mine = slice(rank * share, (rank + 1) * share)
    idx = batch_indices(len(run.latents), cfg.batch_size, cfg.seed, step)[mine]  # (S,)
    g = torch.Generator(device).manual_seed(stream_seed(cfg.seed, step, 1))
    t = sample_t(cfg.batch_size, cfg.t_sampling, g)[mine]  # (S,)
    drop = (torch.rand(cfg.batch_size, generator=g, device=device) < drop_rate)[mine]  # (S,)
    shape = (cfg.batch_size, *run.latents.shape[1:])
    noise = torch.randn(shape, generator=g, device=device)[mine]  # (S, C, h, w)
    x0 = run.latents[idx].to(device, non_blocking=True)  # (S, C, h, w)
    y = None
    if run.num_classes:
        y = torch.where(drop, run.num_classes, run.labels[idx].to(device))  # (S,)
    return x0, y, t, noise


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _backward(run: DiffusionRun, net: nn.Module, forward: Callable, batch: tuple) -> tuple:
    """Forward and backward over this rank's micro-batches: (mean loss, t-bin sums and counts)."""
    x0, y, t, noise = batch
    bf16 = run.cfg.precision == "bf16" and run.device.type == "cuda"
    micro = torch.arange(len(t)).split(run.cfg.micro_batch_size)
    mean_loss = torch.zeros((), device=run.device)
    by_t = torch.zeros(2, T_BINS, device=run.device)  # per-sample loss sums, sample counts
    for k, mb in enumerate(micro):
        # DDP all-reduces the gradients once per step: in the last micro-batch's backward.
        last = k == len(micro) - 1
        sync = contextlib.nullcontext() if last or net is run.model else net.no_sync()
        with sync:
            with torch.autocast("cuda", torch.bfloat16) if bf16 else contextlib.nullcontext():
                pred = forward(
                    interpolate(x0[mb], noise[mb], t[mb]), t[mb], None if y is None else y[mb]
                )  # (b, C, h, w)
            target = velocity_target(x0[mb], noise[mb])  # (b, C, h, w)
            loss, per_sample = flow_loss(pred.float(), target, run.cfg.cos_weight)
            # Summed over micro-batches (and averaged over ranks by DDP): the global-batch mean.
            (loss / len(micro)).backward()
        mean_loss += loss.detach() / len(micro)
        where = (t[mb] * T_BINS).long().clamp_(max=T_BINS - 1)  # (b,)
        by_t[0].index_add_(0, where, per_sample.detach().float())
        by_t[1].index_add_(0, where, torch.ones_like(per_sample, dtype=torch.float))
    return mean_loss, by_t


def _loss_by_t(by_t: Tensor) -> dict[str, float]:
    """{"train/loss_t0.3-0.4": mean loss of the samples with t in [0.3, 0.4), ...}, seen bins."""
    sums, counts = by_t.tolist()
    return {
        f"train/loss_t{i / T_BINS:.1f}-{(i + 1) / T_BINS:.1f}": s / c
        for i, (s, c) in enumerate(zip(sums, counts, strict=True))
        if c > 0
    }


def fit_diffusion(run: DiffusionRun, tracker: Tracker, progress: Advance) -> dict[str, float]:
    """Train `run.model` in place for cfg.steps steps (resuming if it can); set `run.ema`."""
    cfg, dist = run.cfg, run.dist
    cuda = run.device.type == "cuda"
    if cuda and run.device.index is None:  # DDP and the generators want the explicit device
        run.device = torch.device("cuda", torch.cuda.current_device())
    device = run.device
    if cfg.batch_size % (dist.world_size * cfg.micro_batch_size):
        raise LdmError(
            f"diffusion.batch_size {cfg.batch_size} must be a multiple of world_size × "
            f"micro_batch_size = {dist.world_size} × {cfg.micro_batch_size}; change one of them"
        )
    model = run.model.to(device).train()
    if model.num_classes != run.num_classes:
        raise ValueError(f"model has {model.num_classes} classes, the data {run.num_classes}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    ema = copy.deepcopy(model).requires_grad_(False).eval() if dist.is_main else None
    modules: dict[str, nn.Module] = {"model": model} | ({"ema": ema} if ema else {})
    saved = {"optimizer": optimizer}
    state = resume(
        run.work_dir, run.identity, run.settings, cfg.steps, run.notice, dist, modules, saved
    )
    schedule = resumed_schedule(
        cfg.lr, cfg.lr_schedule, cfg.warmup_steps, cfg.steps, state, "diffusion.steps"
    )
    run.carried = carried_hours(state)
    state = state or {}
    if state:
        run.history["resumed_from_step"] = float(state["step"])
    start, skipped = int(state.get("step", 0)), set(state.get("skipped", []))
    past_gpu_hours = float(state.get("gpu_hours", 0.0))
    past_compute_hours = float(state.get("compute_hours", 0.0))
    if run.probe is not None and "curve" in state:
        run.probe.load(state["curve"])
    progress(start, already_done=True)

    net = wrap(model, dist, device)
    forward = torch.compile(net) if cfg.compile and cuda else net
    clock = window_clock = time.perf_counter()

    cpu_clock = time.process_time()

    def gpu_hours() -> float:
        hours = dist.world_size * (time.perf_counter() - clock) / 3600 if cuda else 0.0
        return past_gpu_hours + hours

    def compute_hours() -> float:
        """What the convergence curve is plotted against: GPU-hours, or CPU-hours on a CPU."""
        if cuda:
            return gpu_hours()
        return past_compute_hours + dist.world_size * (time.process_time() - cpu_clock) / 3600

    def log_window(done: int, lr: float) -> None:
        nonlocal sums, window, window_clock, final_loss
        all_reduce_mean(bins)  # sums and counts scale alike, so their ratios are global
        now = time.perf_counter()
        if dist.is_main:
            means = {k: v / window for k, v in sums.items()}
            metrics = means | _loss_by_t(bins) | {"train/lr": lr, "train/gpu_hours": gpu_hours()}
            metrics["train/images_per_second"] = window * cfg.batch_size / (now - window_clock)
            metrics["train/peak_memory_mib"] = _peak_memory_mib(device)
            tracker.log_metrics(metrics, step=done)
            final_loss = means["train/loss"]
        sums, window, window_clock = dict.fromkeys(sums, 0.0), 0, now
        bins.zero_()

    def log_samples(done: int) -> None:
        if ema is not None and run.decode is not None:
            tracker.log_image(sample_grid(ema, run), key="samples", step=done)
        if ema is not None and run.probe is not None:
            hours = compute_hours()
            fd = run.probe(ema, done, hours)
            tracker.log_metrics({run.probe.metric: fd, "curve/compute_hours": hours}, step=done)

    bins = torch.zeros(2, T_BINS, device=device)  # loss sums and counts per t-bin, this window
    sums = {"train/loss": 0.0, "train/grad_norm": 0.0}
    window, images_seen, rollbacks, lr = 0, 0, 0, cfg.lr
    final_loss = float("nan")
    step, embedder = start, model.y_embedder
    drop_rate = embedder.dropout if embedder is not None else 0.0
    if embedder is not None:  # the loop draws the label dropout (exact under resume and DDP)
        embedder.dropout = 0.0
    try:
        while step < cfg.steps:
            if step in skipped:  # its batch made the loss non-finite before a rollback
                step += 1
                progress(1)
                continue
            lr = schedule.rate(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            batch = _rank_batch(run, step, drop_rate)
            step_loss, step_bins = _backward(run, net, forward, batch)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
            # One sync per step: the global mean loss, and whether every rank is finite.
            finite = (torch.isfinite(step_loss) & torch.isfinite(grad_norm)).float()
            global_loss, all_finite = all_reduce_mean(torch.stack([step_loss, finite])).tolist()
            if all_finite < 1.0:
                last_good = checkpoint.latest_state(run.work_dir)
                if cfg.on_non_finite == "stop" or last_good is None or rollbacks >= MAX_ROLLBACKS:
                    raise NonFiniteLoss.at(
                        step,
                        "the loss or gradient is not finite",
                        run.work_dir,
                        "lower diffusion.lr, raise warmup_steps or set grad_clip",
                    )
                restored = checkpoint.load_state(last_good, modules)
                optimizer.load_state_dict(restored["optimizer"])
                skipped.add(step)
                rollbacks += 1
                run.history["train/rollbacks"] = float(rollbacks)
                if dist.is_main:
                    tracker.log_metrics({"train/rollbacks": float(rollbacks)}, step=step)
                progress(restored["step"] - step)
                step = restored["step"]
                continue
            optimizer.step()
            if ema is not None:
                update_ema(ema, model, cfg.ema_decay)

            bins += step_bins
            sums["train/loss"] += global_loss
            sums["train/grad_norm"] += float(grad_norm)
            window += 1
            images_seen += cfg.batch_size
            done = step + 1
            if done % LOG_EVERY == 0 or done == cfg.steps:
                log_window(done, lr)
            if done % cfg.sample_every == 0 or done == cfg.steps:
                log_samples(done)
            # The last step is saved too, so that raising the steps later extends this run.
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                hours = hours_so_far(run.clock, run.carried, dist, device)  # every rank: a sum
                if dist.is_main:
                    extra = {"schedule": schedule.state(), "skipped": sorted(skipped)}
                    extra |= {"gpu_hours": gpu_hours(), "compute_hours": compute_hours()}
                    extra["hours"] = hours.state()  # the stage's whole spend, for its cost
                    if run.probe is not None:
                        extra["curve"] = run.probe.state()
                    save_resume_point(
                        run.work_dir, done, run.identity, run.settings, modules, saved, extra
                    )
                barrier()  # no rank runs ahead of a resume point it might roll back to
            progress(1, loss=final_loss)
            step += 1
    finally:
        if embedder is not None:
            embedder.dropout = drop_rate
    if window:  # the last step was a skipped one: log what the window holds
        log_window(cfg.steps, lr)
    seconds = time.perf_counter() - clock
    run.ema = ema
    run.history["train/images_per_second"] = images_seen / seconds if seconds > 0 else 0.0
    run.history["train/steps"] = float(cfg.steps)
    run.history["train/final_loss"] = final_loss
    run.history["train/gpu_hours"] = gpu_hours()
    return dict(run.history)
