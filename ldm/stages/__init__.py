"""One function per stage: files in, files out. The CLI, DVC and Prefect only call `run`.

`run(stage, cfg, paths)` wraps every stage the same way: an MLflow run named after the stage
(nested under the trial's run inside `ldm run`), the stage's params sections, its cost, its
metrics (also written to `data/metrics/<stage>.json` for `dvc metrics show`) and its artifacts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ldm.config import Config
from ldm.cost import CostMeter
from ldm.errors import DataError
from ldm.paths import Paths
from ldm.stages import data, tokenizer
from ldm.stages.result import StageResult
from ldm.tracking import Tracker

# Stage name -> (function, params sections it reads). The order is the pipeline's DAG order;
# dvc.yaml and the Prefect flow use the same names (tests/test_wiring.py checks it).
StageFunction = Callable[[Config, Paths, Tracker], StageResult]
STAGES: dict[str, tuple[StageFunction, tuple[str, ...]]] = {
    "validate": (data.validate, ("data", "validate")),
    "prepare": (data.prepare, ("data", "prepare")),
    "train_tokenizer": (tokenizer.train_tokenizer, ("data", "tokenizer", "align", "evaluate")),
    "align_tokenizer": (tokenizer.align_tokenizer, ("data", "tokenizer", "align", "evaluate")),
}


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run(stage: str, cfg: Config, paths: Paths) -> StageResult:
    """Run one stage with tracking and cost metering; raise DataError if its data failed checks."""
    from ldm import tracking

    function, sections = STAGES[stage]
    with tracking.stage_run(paths.root, cfg.tracking.experiment, stage) as tracker:
        tracker.log_params({name: cfg.section(name) for name in sections})
        with CostMeter(cfg.cost) as meter:
            result = function(cfg, paths, tracker)
        metrics = result.metrics | meter.metrics()
        write_json_atomic(paths.stage_metrics(stage), metrics)
        tracker.log_metrics(metrics)
        for artifact in result.artifacts:
            tracker.log_artifact(artifact)
        tracker.set_tags({"ldm.outcome": "failed" if result.problems else "passed"})
        if result.problems:
            listed = "\n".join(f"  - {p}" for p in result.problems)
            raise DataError(
                f"{stage}: the data-quality checks failed:\n{listed}\n"
                f"Details: `ldm ui`, run {tracker.run_id}, and the outputs under "
                f"{paths.data}."
            )
    return StageResult(metrics, result.artifacts)
