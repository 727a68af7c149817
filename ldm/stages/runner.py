"""How every stage runs: files in, files out. The CLI, DVC and Prefect only call `run`.

`run(stage, cfg, paths)` wraps every stage the same way: an MLflow run named after the stage
(nested under the trial's run inside `ldm run`), the params sections its dvc.yaml names, its
cost, its metrics (also written to `data/metrics/<stage>.json` for `dvc metrics show`) and its
artifacts.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from ldm.config import Config
from ldm.cost import CostMeter, device_of_this_process
from ldm.errors import DataError, LdmError
from ldm.files import write_json_atomic
from ldm.paths import Paths, split_cell
from ldm.stages import launch
from ldm.stages.registry import STAGES, Stage, declared_params
from ldm.stages.result import StageResult
from ldm.tracker import NullTracker


def run(
    stage: str,
    cfg: Config,
    paths: Paths,
    cell: str | None = None,
    command: list[str] | None = None,
) -> StageResult:
    """Run one stage (a per-variant one for `cell`, `plain-0`) with tracking and cost metering;
    raise DataError if its data failed checks.

    `command` is the `ldm` command line that starts this stage again: a stage whose world_size
    is above 1 relaunches itself with it under torchrun (ldm/stages/launch.py).
    """
    from ldm import tracking

    spec = STAGES[stage]
    if spec.per_variant and cell not in cfg.cells():
        raise DataError(
            f"{stage} runs per cell, a variant and a seed: pick one of {cfg.cells()} "
            "(--variant, --seed; variants and trial.seeds in params.yaml)"
        )
    name = f"{stage}@{cell}" if spec.per_variant else stage
    args = (cell,) if spec.per_variant else ()
    try:
        if launch.launched_here():  # one rank of a job the stage command started: rank 0 logs
            run_id = os.environ[launch.STAGE_RUN_ENV]
            tracker = tracking.attach(paths.root, run_id) if launch.is_main() else NullTracker()
            return launch.run_rank(lambda t: spec.function(cfg, paths, t, *args), tracker)
        if launch.under_torchrun() and not launch.is_main():
            # Started by hand under torchrun: only rank 0 records; the others train silently.
            return spec.function(cfg, paths, NullTracker(), *args)
        processes = launch.world_size(stage, cfg.section)
        if processes > 1 and not launch.under_torchrun():
            if command is None:
                raise LdmError(f"{name}: world_size {processes} needs its command to relaunch")
            launch.check_devices(stage, cfg.section)
        return _run_recorded(spec, name, args, cfg, paths, processes, command)
    except OSError as err:
        if err.errno not in CANNOT_WRITE:
            raise
        raise LdmError(
            f"{name}: cannot write {err.filename or 'its output'}: {err.strerror}. Free disk "
            f"space or make {paths.data} writable, then run it again: finished work is kept, "
            "and training resumes from its last complete checkpoint (a checkpoint is only "
            "ever read once it was written whole)."
        ) from err


# Errors that mean the disk or a folder refuses the stage's output, not a bug to retry.
CANNOT_WRITE = {
    errno.ENOSPC,  # disk full
    errno.EDQUOT,
    errno.EACCES,  # a folder without write permission
    errno.EPERM,
    errno.EROFS,  # a read-only mount
    errno.ENOTDIR,  # a file where an output folder should be
    errno.EEXIST,
}


def _run_recorded(
    spec: Stage,
    name: str,
    args: tuple,
    cfg: Config,
    paths: Paths,
    processes: int,
    command: list[str] | None,
) -> StageResult:
    from ldm import tracking

    with tracking.stage_run(paths.root, cfg.tracking.experiment, name) as tracker:
        tracker.log_params(logged_params(name, spec, args, cfg, paths))
        with CostMeter(cfg.cost) as meter:
            if processes > 1 and not launch.under_torchrun():
                result, devices = launch.relaunch(command, processes, tracker.run_id)
            else:
                result = spec.function(cfg, paths, tracker, *args)
                devices = device_of_this_process(int(os.environ.get("WORLD_SIZE", "1")))
        # The loop that resumed knows what the earlier attempts spent (its resume point keeps
        # it); the meter knows this attempt. The result carries the former here, rather than
        # the loop reading a meter: under torchrun the meter is in this launcher process and
        # the loop in a rank, and the result already travels from rank 0 (launch.run_rank).
        metrics = result.metrics | meter.metrics(devices, result.carried)
        content = metrics
        if result.document is not None:
            content, metrics = result.document(metrics)
        if spec.writes_metrics_file:
            write_json_atomic(paths.stage_metrics(name), content)
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        for artifact in result.artifacts:
            tracker.log_artifact(artifact)
        outcome = "failed" if result.problems else "passed"
        tracker.set_tags({"ldm.outcome": outcome, "cost.device_kind": devices.kind})
        if result.problems:
            listed = "\n".join(f"  - {p}" for p in result.problems)
            raise DataError(
                f"{name}: the data-quality checks failed:\n{listed}\n"
                f"Details: `ldm ui`, run {tracker.run_id}, and the outputs under "
                f"{paths.data}."
            )
    return StageResult(metrics, result.artifacts)


def logged_params(name: str, spec: Stage, args: tuple, cfg: Config, paths: Paths) -> dict[str, Any]:
    """The params logged with run `name` (`encode@plain-0`): each section its stage's dvc.yaml
    params name, whole, and a per-variant stage's own variant and seed. Without a dvc.yaml,
    every section."""
    declared = declared_params(paths.root, name.partition("@")[0])
    if declared is None:
        sections = [section for section in cfg.to_dict() if section != "variants"]
    else:
        own_variant = "variants.${item.variant}"  # logged below, under `variant`
        sections = [e.split(".")[0] for e in declared if e != own_variant]
    params = {section: cfg.section(section) for section in dict.fromkeys(sections)}
    if spec.per_variant:
        (cell,) = args
        variant, seed = split_cell(cell)
        params["variant"] = {"name": variant} | cfg.section("variants")[variant]
        params["cell"] = {"name": cell, "seed": seed}
    return params
