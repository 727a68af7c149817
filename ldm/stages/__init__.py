"""One function per stage: files in, files out. The CLI, DVC and Prefect only call `run`.

`run(stage, cfg, paths)` wraps every stage the same way: an MLflow run named after the stage
(nested under the trial's run inside `ldm run`), the stage's params sections, its cost, its
metrics (also written to `data/metrics/<stage>.json` for `dvc metrics show`) and its artifacts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ldm import launch
from ldm.config import Config
from ldm.cost import CostMeter, device_of_this_process
from ldm.errors import DataError, LdmError
from ldm.paths import Paths
from ldm.stages import encode, prepare, tokenizer, train_diffusion, validate
from ldm.stages.result import StageResult


@dataclass(frozen=True)
class Stage:
    function: Callable[..., StageResult]  # (cfg, paths, tracker[, variant]) -> StageResult
    # The params it reads that change what it writes: its DVC params (a test keeps them equal)
    # and, by section, the params logged with its run. `variants.${key}` is the variant's entry.
    params: tuple[str, ...]
    per_variant: bool = False  # one run per tokenizer variant in `variants`: name@variant

    @property
    def sections(self) -> list[str]:
        return [s for s in dict.fromkeys(k.split(".")[0] for k in self.params) if s != "variants"]


# The pipeline's stages in DAG order. dvc.yaml and the Prefect flow use the same names
# (tests/test_wiring.py checks it); per-variant stages are DVC `foreach` stages.
STAGES: dict[str, Stage] = {
    "validate": Stage(validate.validate, ("data.raw_dir", "validate")),
    "prepare": Stage(
        prepare.prepare, ("data.raw_dir", "data.resolution", "data.val_fraction", "prepare")
    ),
    "train_tokenizer": Stage(
        tokenizer.train_tokenizer,
        (
            "variants.${key}",
            "data.resolution",
            "tokenizer",
            "align",
            "evaluate.features",
            "evaluate.features_weights",
            "evaluate.features_sha256",
            "evaluate.batch_size",
        ),
        per_variant=True,
    ),
    "encode": Stage(encode.encode, ("tokenizer.device", "evaluate.batch_size"), per_variant=True),
    "train_diffusion": Stage(
        train_diffusion.train_diffusion, ("diffusion", "sample"), per_variant=True
    ),
}


def stage_names(cfg: Config) -> list[str]:
    """Every DVC stage of the trial in DAG order, per-variant ones expanded (`encode@plain`)."""
    names = []
    for name, stage in STAGES.items():
        names += [f"{name}@{v}" for v in cfg.variants] if stage.per_variant else [name]
    return names


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run(
    stage: str,
    cfg: Config,
    paths: Paths,
    variant: str | None = None,
    command: list[str] | None = None,
) -> StageResult:
    """Run one stage with tracking and cost metering; raise DataError if its data failed checks.

    `command` is the `ldm` command line that starts this stage again: a stage whose world_size
    is above 1 relaunches itself with it under torchrun (ldm/launch.py).
    """
    from ldm import tracking

    spec = STAGES[stage]
    if spec.per_variant and variant not in cfg.variants:
        raise DataError(f"{stage} runs per variant: pick one of {list(cfg.variants)} (--variant)")
    name = f"{stage}@{variant}" if spec.per_variant else stage
    args = (variant,) if spec.per_variant else ()
    if launch.launched_here():  # one rank of a job the stage command started: rank 0 logs
        run_id = os.environ[launch.STAGE_RUN_ENV]
        tracker = (
            tracking.attach(paths.root, run_id) if launch.is_main() else tracking.NullTracker()
        )
        return launch.run_rank(lambda t: spec.function(cfg, paths, t, *args), tracker)
    if launch.under_torchrun() and not launch.is_main():
        # Started by hand under torchrun: only rank 0 records; the others train and stay silent.
        return spec.function(cfg, paths, tracking.NullTracker(), *args)
    processes = launch.world_size(stage, cfg.section)
    relaunch = processes > 1 and not launch.under_torchrun()
    if relaunch:
        if command is None:
            raise LdmError(f"{name}: world_size {processes} needs the stage's command to relaunch")
        launch.check_devices(stage, cfg.section)
    with tracking.stage_run(paths.root, cfg.tracking.experiment, name) as tracker:
        tracker.log_params(
            {section: cfg.section(section) for section in spec.sections}
            | (
                {"variant": {"name": variant} | cfg.section("variants")[variant]}
                if spec.per_variant
                else {}
            )
        )
        with CostMeter(cfg.cost) as meter:
            if relaunch:
                result, devices = launch.relaunch(command, processes, tracker.run_id)
            else:
                result = spec.function(cfg, paths, tracker, *args)
                devices = device_of_this_process(int(os.environ.get("WORLD_SIZE", "1")))
        metrics = result.metrics | meter.metrics(devices)
        write_json_atomic(paths.stage_metrics(name), metrics)
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
