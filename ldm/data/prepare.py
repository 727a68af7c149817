"""Prepare: validated images -> square uint8 arrays in .npy shards, split train/val by content hash.

Reads the validate stage's `manifest.parquet` (accepted files only) and writes, into `out_dir`:
`{train,val}/images-NNNNN.npy` (N x H x W x 3 uint8), `{train,val}/labels-NNNNN.npy` (int64),
`{train,val}/files.csv` and `meta.json`. The output is byte-for-byte deterministic whatever the
number of workers, and it appears all at once: a crash never leaves a half-written folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ldm.data.images import open_image, to_rgb
from ldm.data.parallel import ordered_map
from ldm.data.shards import ShardedArray, ShardWriter
from ldm.errors import DataError
from ldm.files import swap_in

SPLITS = ("train", "val")
LAYOUT = "NHWC uint8"
REQUIRED_COLUMNS = ("path", "class", "width", "height", "sha256")

# (absolute path, expected sha256, max_pixels, resolution): plain tuples pickle cheaply to workers.
Task = tuple[str, str, int, int]


def center_crop_resize(im: Image.Image, size: int) -> Image.Image:
    """The ADM/DiT centre crop: halve with BOX, BICUBIC to shorter side == size, crop the centre."""
    # Repeated 2x BOX reductions anti-alias large downscales that a single BICUBIC would alias.
    while min(im.size) >= 2 * size:
        im = im.resize(tuple(x // 2 for x in im.size), resample=Image.Resampling.BOX)
    scale = size / min(im.size)
    im = im.resize(tuple(round(x * scale) for x in im.size), resample=Image.Resampling.BICUBIC)
    left = (im.width - size) // 2
    top = (im.height - size) // 2
    return im.crop((left, top, left + size, top + size))


def split_of(sha256: str, val_fraction: float) -> str:
    """'val' or 'train' from the file's hash alone, so adding or removing files moves no other."""
    return "val" if int(sha256[:16], 16) / 2**64 < val_fraction else "train"


def manifest_digest(rows: Iterable[tuple[str, str, str]]) -> str:
    """sha256 over the sorted (path, sha256, class) rows: the content, not the parquet encoding."""
    canonical = json.dumps(sorted(rows), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _load_one(task: Task) -> np.ndarray:
    """Read, check, decode and crop one file; runs in a worker process."""
    path, expected_sha, max_pixels, resolution = task
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err}); rerun `ldm validate`") from None
    if hashlib.sha256(data).hexdigest() != expected_sha:
        # A changed file would keep its old split and could leak between train and val.
        raise DataError(f"{path}: changed since validation; rerun `ldm validate`")
    try:
        im = to_rgb(open_image(data, max_pixels))
    except Exception as err:  # noqa: BLE001 - any decoder failure means the manifest is stale
        raise DataError(f"{path}: cannot decode ({err}); rerun `ldm validate`") from None
    return np.asarray(center_crop_resize(im, resolution), dtype=np.uint8)


def _read_manifest(manifest_path: Path) -> list[dict[str, Any]]:
    import polars as pl  # here: training reads shards (load_split) on hosts without polars

    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: manifest not found; run `ldm validate` first")
    try:
        frame = pl.read_parquet(manifest_path)
    except Exception as err:  # noqa: BLE001 - polars raises several types for a bad file
        raise DataError(f"{manifest_path}: unreadable ({err}); rerun `ldm validate`") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{manifest_path}: missing columns {missing}; rerun `ldm validate`")
    if frame.height == 0:
        raise DataError(f"{manifest_path}: no accepted images; add images to data.raw_dir")
    frame = frame.with_columns(pl.col("class").fill_null(""))
    return sorted(frame.select(REQUIRED_COLUMNS).to_dicts(), key=lambda r: r["path"])


class _SplitWriter(ShardWriter):
    """One split's images in shards, and its files.csv: index, path, class, label, sha256."""

    def __init__(self, folder: Path, total: int, shard_size: int) -> None:
        # A split smaller than a shard holds only its own images in memory.
        super().__init__(folder, min(shard_size, total), "images")
        self.rows: list[tuple[int, str, str, int, str]] = []

    def add(self, image: np.ndarray, row: dict[str, Any], label: int) -> None:
        self.rows.append((self.count, row["path"], row["class"], label, row["sha256"]))
        super().add(image[None], [label])

    def close(self) -> None:
        self.flush()
        with open(self.folder / "files.csv", "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh, lineterminator="\n")
            out.writerow(["index", "path", "class", "label", "sha256"])
            out.writerows(self.rows)


def prepare(
    manifest_path: Path,
    raw_dir: Path,
    out_dir: Path,
    resolution: int,
    val_fraction: float,
    shard_size: int,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Decode, crop and shard the manifest's images into `out_dir`; return the stage's metrics.

    `progress`, if given, is called with the number of images just finished (an increment).
    """
    started = time.perf_counter()
    rows = _read_manifest(Path(manifest_path))
    class_map = {name: i for i, name in enumerate(sorted({r["class"] for r in rows}))}
    splits = [split_of(r["sha256"], val_fraction) for r in rows]
    totals = {s: splits.count(s) for s in SPLITS}
    for split, other in (("train", "val"), ("val", "train")):
        if totals[split] == 0:
            raise DataError(
                f"the {split} split would be empty: all {len(rows)} images fall in {other} with "
                f"data.val_fraction={val_fraction}; change data.val_fraction or add images"
            )

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        writers = {s: _SplitWriter(tmp / s, totals[s], shard_size) for s in SPLITS}
        tasks: list[Task] = [
            (str(Path(raw_dir) / r["path"]), r["sha256"], r["width"] * r["height"] + 1, resolution)
            for r in rows
        ]
        images = ordered_map(_load_one, tasks, workers, progress)
        for image, row, split in zip(images, rows, splits, strict=True):
            writers[split].add(image, row, class_map[row["class"]])
        for writer in writers.values():
            writer.close()
        meta = _meta(rows, splits, writers, class_map, resolution, val_fraction, shard_size)
        text = json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (tmp / "meta.json").write_text(text, encoding="utf-8")
        swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - started
    return {
        "n_train": totals["train"],
        "n_val": totals["val"],
        "n_classes": len(class_map),
        "resolution": resolution,
        "images_per_second": round(len(rows) / max(elapsed, 1e-9), 3),
    }


def _meta(
    rows: list[dict[str, Any]],
    splits: list[str],
    writers: dict[str, _SplitWriter],
    class_map: dict[str, int],
    resolution: int,
    val_fraction: float,
    shard_size: int,
) -> dict[str, Any]:
    """The description of the prepared folder; no timestamps, so reruns give the same bytes."""
    per_class = {s: {name: 0 for name in class_map} for s in SPLITS}
    for row, split in zip(rows, splits, strict=True):
        per_class[split][row["class"]] += 1
    return {
        "resolution": resolution,
        "layout": LAYOUT,
        "val_fraction": val_fraction,
        "shard_size": shard_size,
        "counts": {s: writers[s].count for s in SPLITS},
        "class_counts": per_class,
        "class_map": class_map,
        "num_classes": len(class_map),
        "shards": {s: writers[s].shards for s in SPLITS},
        "source_manifest_sha256": manifest_digest(
            (r["path"], r["sha256"], r["class"]) for r in rows
        ),
    }


def load_split(prepared_dir: Path, split: str) -> tuple[ShardedArray, np.ndarray]:
    """(images N x H x W x 3 uint8, read from the shards per access; labels N int64 in memory)."""
    meta_path = Path(prepared_dir) / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{prepared_dir}: no prepared data (meta.json missing); run `ldm prepare`")
    shards = json.loads(meta_path.read_text(encoding="utf-8"))["shards"]
    if split not in shards:
        raise DataError(
            f"{prepared_dir}: unknown split {split!r}; expected one of {sorted(shards)}"
        )
    folder = Path(prepared_dir) / split
    images = ShardedArray([folder / s["images"] for s in shards[split]])
    # 8 bytes an image: the labels of even a million images fit in memory.
    labels = np.concatenate(
        [np.load(folder / s["labels"], allow_pickle=False) for s in shards[split]]
    ).astype(np.int64, copy=False)
    if len(labels) != len(images):
        raise DataError(
            f"{folder}: {len(images)} images but {len(labels)} labels; run `ldm prepare` again"
        )
    return images, labels
