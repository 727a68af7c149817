"""Where a training loop starts and where it stops: resume points read and written, divergence.

Both loops save the same things at a resume point: every module's weights, every optimiser's
state under its own key, what the saved tensors mean (`identity`) and the settings they were
trained under, and the loop's own extras (the learning-rate schedule, counters, curves, and the
hours the stage spent so far, which the attempt resuming there carries into its cost record).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.cost import Clock, Hours, device_of_this_process
from ldm.errors import LdmError
from ldm.training import checkpoint
from ldm.training.distributed import Dist, all_reduce_mean, barrier


class NonFiniteLoss(LdmError):
    """Training diverged; the message names the last good checkpoint."""

    @classmethod
    def at(cls, step: int, what: str, work_dir: Path, remedy: str) -> NonFiniteLoss:
        """`what` went non-finite at `step`: the error naming the newest resume point in
        `work_dir` and `remedy`, the settings to change before running again."""
        last = checkpoint.latest_state(work_dir)
        return cls(
            f"step {step}: {what}; training stopped. The last good checkpoint is "
            f"{last or '(none yet)'}; {remedy}, then run again to resume."
        )


def resume(
    work_dir: Path,
    identity: dict[str, Any],
    settings: dict[str, Any],
    steps: int,
    notice: Callable[[str], None],
    dist: Dist,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> dict[str, Any] | None:
    """Load the newest resume point in `work_dir` that these settings can continue.

    `modules` get their weights and `optimizers` their state (each saved under its key). Returns
    the saved state (its "step" and the loop's extras), or None when training starts at step 0;
    a state that cannot be continued is moved aside, by rank 0 once every rank has read it.
    """
    latest = checkpoint.latest_state(work_dir)
    found = checkpoint.find_resume_point(
        work_dir,
        identity,
        settings,
        steps,
        notice if dist.is_main else lambda _: None,
        may_move=False,
    )
    barrier()  # every rank has read the folder before rank 0 may move it
    if found is None:
        if dist.is_main and latest is not None:
            step = torch.load(latest / "state.pt", weights_only=True)["step"]
            checkpoint.set_aside(work_dir, checkpoint.aside_name(work_dir, step))
        return None
    folder, state = found
    checkpoint.load_state(folder, modules)
    for key, optimizer in optimizers.items():
        optimizer.load_state_dict(state[key])
    return state


def save_resume_point(
    work_dir: Path,
    step: int,
    identity: dict[str, Any],
    settings: dict[str, Any],
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extras: dict[str, Any],
) -> Path:
    """Write the resume point after `step` steps, for `resume` to find (call on rank 0)."""
    state = {key: cpu_state(optimizer) for key, optimizer in optimizers.items()}
    state |= checkpoint.resume_metadata(identity, settings) | extras
    return checkpoint.save_state(work_dir, step, modules, state)


def cpu_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's state with CPU tensors: every rank can load it without touching GPU 0."""
    sd = optimizer.state_dict()
    sd["state"] = {
        key: {name: v.cpu() if torch.is_tensor(v) else v for name, v in per_param.items()}
        for key, per_param in sd["state"].items()
    }
    return sd


def carried_hours(state: dict[str, Any] | None) -> Hours | None:
    """What the attempts before this one spent up to the resume point `state` (None when
    training starts at step 0, or from a resume point written before hours were kept)."""
    return Hours.from_state(state.get("hours")) if state else None


def hours_so_far(clock: Clock, carried: Hours | None, dist: Dist, device: torch.device) -> Hours:
    """The stage's hours up to now, for a resume point: `carried` plus this attempt's on every
    rank (its CPU-, GPU-hours and energy summed; the wall time is this rank's: rank 0 saves it).
    Under DDP every rank calls it at the same step: the sum is an all-reduce."""
    own = clock.hours(device_of_this_process())  # one GPU per rank, or the CPU
    if dist.world_size > 1:
        # NaN where a rank's GPU was not measured: the sum is then unknown, not a part
        energy = math.nan if own.energy_kwh is None else own.energy_kwh
        values = torch.tensor([own.cpu_hours, own.gpu_hours, energy], dtype=torch.float64)
        summed = all_reduce_mean(values.to(device)) * dist.world_size
        cpu_hours, gpu_hours, energy = summed.tolist()
        own = Hours(
            wall_seconds=own.wall_seconds,
            cpu_hours=cpu_hours,
            gpu_hours=gpu_hours,
            energy_kwh=None if math.isnan(energy) else energy,
        )
    return own if carried is None else carried + own
