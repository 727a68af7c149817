"""Scan the raw folder: one row per file, inspected in parallel, then the manifest tables.

`scan` never changes the input folder. `write_tables` splits the rows into `manifest.parquet`
(accepted) and `rejected.csv` (rejected, with a reason), so every file is accounted for once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from ldm.config import ValidateConfig
from ldm.data.inspect import REASON_CODES, inspect_file, new_row, reject
from ldm.data.parallel import ordered_map
from ldm.errors import DataError

# The columns of a row (`inspect.new_row`), with explicit dtypes so that an empty folder's
# tables still have every column with the right type.
SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),
    "class": pl.String(),
    "format": pl.String(),
    "width": pl.Int64(),
    "height": pl.Int64(),
    "mode": pl.String(),
    "channels": pl.Int64(),
    "bytes": pl.Int64(),
    "sha256": pl.String(),
    "status": pl.String(),
    "reason_code": pl.String(),
    "reason": pl.String(),
}


def list_files(raw_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Sorted relative paths of files and folder symlinks, plus rows for unlistable folders."""
    found: list[str] = []
    unlisted: list[dict[str, Any]] = []

    def on_error(err: OSError) -> None:
        rel = Path(err.filename).relative_to(raw_dir).as_posix() + "/"
        unlisted.append(reject(new_row(rel), "unreadable", f"cannot list folder: {err.strerror}"))

    for folder, dirnames, filenames in os.walk(raw_dir, onerror=on_error, followlinks=False):
        base = Path(folder).relative_to(raw_dir)
        # os.walk lists a symlink to a folder among dirnames and does not enter it; report it.
        links = [d for d in dirnames if os.path.islink(os.path.join(folder, d))]
        found.extend((base / name).as_posix() for name in [*filenames, *links])
    return sorted(found), unlisted


def dvc_blockers(raw_dir: Path) -> list[str]:
    """Entries that stop DVC from hashing the data folder, so `ldm run` can name them first.

    `ldm validate` rejects a dangling symlink like any bad file, but DVC, which hashes the whole
    folder to decide what reruns, fails on one with a bare "No such file or directory".
    """
    if not raw_dir.is_dir():
        return []
    files, _ = list_files(raw_dir)
    return [path for path in files if not (raw_dir / path).exists()]  # exists() follows links


def mark_duplicates(rows: list[dict[str, Any]]) -> None:
    """Keep the first accepted row (by path) of each sha256; reject the other copies in place."""
    kept: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        if row["status"] != "accepted":
            continue
        first = kept.setdefault(row["sha256"], row["path"])
        if first != row["path"]:
            reject(row, "duplicate", f"exact duplicate of {first}")


def _inspect_one(task: tuple[str, str, int, int]) -> dict[str, Any]:
    return inspect_file(*task)


def scan(
    raw_dir: Path,
    cfg: ValidateConfig,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> pl.DataFrame:
    """Inspect every file under raw_dir; one row per file (schema SCHEMA), sorted by path.

    `progress(n)` is called with the number of files just finished (n = 1 per file).
    `workers` = 0 means one process per CPU core.
    """
    raw_dir = Path(raw_dir)
    hint = f"put images in {raw_dir} (sub-folders = classes) or run `ldm sample-data {raw_dir}`"
    if not raw_dir.exists():
        raise DataError(f"{raw_dir}: data folder does not exist; {hint}")
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: not a folder; {hint}")
    paths, unlisted = list_files(raw_dir)
    if not paths and not unlisted:
        raise DataError(f"{raw_dir}: the data folder holds no files; {hint}")
    tasks = [(str(raw_dir), path, cfg.min_side, cfg.max_pixels) for path in paths]
    rows = list(ordered_map(_inspect_one, tasks, workers, progress)) + unlisted
    mark_duplicates(rows)
    return pl.DataFrame(rows, schema=SCHEMA).sort("path")


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write to a temp name in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tables(files: pl.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    """Write manifest.parquet (accepted rows) and rejected.csv (rejected rows) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accepted = files.filter(pl.col("status") == "accepted")
    rejected = files.filter(pl.col("status") != "accepted")
    manifest_path, rejected_path = out_dir / "manifest.parquet", out_dir / "rejected.csv"
    _write_atomic(manifest_path, accepted.write_parquet)
    _write_atomic(rejected_path, rejected.write_csv)
    return manifest_path, rejected_path


def count_metrics(files: pl.DataFrame) -> dict[str, float]:
    """File counts for the metrics file: totals, classes, and one counter per reason code."""
    n_files = files.height
    accepted = files.filter(pl.col("status") == "accepted")
    codes = files["reason_code"].value_counts()
    by_code = dict(zip(codes["reason_code"].to_list(), codes["count"].to_list(), strict=True))
    metrics: dict[str, float] = {
        "n_files": float(n_files),
        "n_accepted": float(accepted.height),
        "n_rejected": float(n_files - accepted.height),
        "n_classes": float(accepted["class"].n_unique()) if accepted.height else 0.0,
        "accepted_fraction": accepted.height / n_files if n_files else 0.0,
    }
    for code in REASON_CODES:
        metrics[f"n_rejected_{code}"] = float(by_code.get(code, 0))
    return metrics
