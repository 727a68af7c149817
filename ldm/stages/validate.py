"""The validate stage: manifest of every raw file, rejects, and the data-quality suite."""

from __future__ import annotations

from ldm.config import Config
from ldm.paths import Paths
from ldm.progress import progress_bar
from ldm.stages.result import StageResult
from ldm.tracker import Tracker


def validate(cfg: Config, paths: Paths, tracker: Tracker) -> StageResult:
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
