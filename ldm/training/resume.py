"""Where a training loop starts and where it stops: resume points read and written, divergence.

Both loops save the same things at a resume point: every module's weights, every optimiser's
state under its own key, what the saved tensors mean (`identity`) and the settings they were
trained under, and the loop's own extras (the learning-rate schedule, counters, curves).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.errors import LdmError
from ldm.training import checkpoint
from ldm.training.distributed import Dist, barrier


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
