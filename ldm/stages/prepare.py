"""The prepare stage: accepted images cropped and resized into train/val shards."""

from __future__ import annotations

from ldm.config import Config
from ldm.errors import DataError
from ldm.paths import Paths
from ldm.progress import progress_bar
from ldm.stages.result import StageResult
from ldm.tracker import Tracker


def prepare(cfg: Config, paths: Paths, tracker: Tracker) -> StageResult:
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
