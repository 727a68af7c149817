"""One function per stage: files in, files out. The CLI, DVC and Prefect only call `run`.

`run(stage, cfg, paths)` wraps every stage the same way: an MLflow run named after the stage
(nested under the trial's run inside `ldm run`), the stage's params sections, its cost, its
metrics (also written to `data/metrics/<stage>.json` for `dvc metrics show`) and its artifacts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ldm.config import Config
from ldm.cost import CostMeter
from ldm.errors import DataError
from ldm.paths import Paths
from ldm.progress import progress_bar


@dataclass(frozen=True)
class StageResult:
    metrics: dict[str, float]
    artifacts: list[Path] = field(default_factory=list)  # files or folders logged to MLflow
    problems: list[str] = field(default_factory=list)  # non-empty: the stage failed on its data


def validate(cfg: Config, paths: Paths) -> StageResult:
    """List and decode every raw file, write manifest + rejects, run the data-quality suite."""
    from ldm.data.quality import check_quality
    from ldm.data.validate import count_metrics, scan, write_tables

    raw_dir = paths.resolve(cfg.data.raw_dir)
    with progress_bar(f"validate {raw_dir}") as advance:
        files = scan(raw_dir, cfg.validate_, cfg.data.workers, advance)
    manifest, rejected = write_tables(files, paths.validated)
    quality = check_quality(files, cfg.validate_, paths.validated / "report")
    metrics = count_metrics(files) | {"quality_passed": float(quality.passed)}
    artifacts = [manifest, rejected, quality.result_json, quality.docs_index.parent]
    return StageResult(metrics, artifacts, quality.failed)


def prepare(cfg: Config, paths: Paths) -> StageResult:
    """Crop and resize accepted images into train/val shards with a class map."""
    import polars as pl

    from ldm.data.prepare import prepare as prepare_shards

    if not paths.manifest.is_file():
        raise DataError(f"{paths.manifest} not found: run `ldm validate` first")
    total = pl.scan_parquet(paths.manifest).select(pl.len()).collect().item()
    with progress_bar("prepare", total) as advance:
        metrics = prepare_shards(
            manifest_path=paths.manifest,
            raw_dir=paths.resolve(cfg.data.raw_dir),
            out_dir=paths.prepared,
            resolution=cfg.data.resolution,
            val_fraction=cfg.data.val_fraction,
            shard_size=cfg.prepare.shard_size,
            workers=cfg.data.workers,
            progress=advance,
        )
    return StageResult(metrics, [paths.prepared / "meta.json"])


# Stage name -> (function, params sections it reads). The order is the pipeline's DAG order;
# dvc.yaml and the Prefect flow use the same names (tests/test_wiring.py checks it).
STAGES: dict[str, tuple[Callable[[Config, Paths], StageResult], tuple[str, ...]]] = {
    "validate": (validate, ("data", "validate")),
    "prepare": (prepare, ("data", "prepare")),
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
            result = function(cfg, paths)
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
