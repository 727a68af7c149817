"""prepare: deterministic shards, hash-stable splits, EXIF-aware decoding, atomic replacement."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from ldm.data.prepare import center_crop_resize, load_split, prepare, split_of
from ldm.errors import DataError

RES = 16


def write_images(raw: Path, classes: dict[str, int], seed: int = 0) -> None:
    """Random-noise PNGs of varied sizes; noise makes every file (and its hash) distinct."""
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (raw / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(20, 60, size=2))
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(raw / name / f"{name}-{i:03d}.png")


def write_manifest(raw: Path, manifest: Path) -> pl.DataFrame:
    """A manifest like the validate stage's: every image under `raw` accepted."""
    rows = []
    for file in sorted(p for p in raw.rglob("*") if p.is_file()):
        data = file.read_bytes()
        with Image.open(file) as im:
            fmt, (w, h), mode, bands = im.format, im.size, im.mode, len(im.getbands())
        rel = file.relative_to(raw)
        rows.append(
            {
                "path": rel.as_posix(),
                "class": rel.parent.as_posix() if rel.parent.parts else "",
                "format": fmt,
                "width": w,
                "height": h,
                "mode": mode,
                "channels": bands,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "status": "accepted",
                "reason_code": "",
                "reason": "",
            }
        )
    frame = pl.DataFrame(rows)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(manifest)
    return frame


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "raw"
    write_images(raw, {"cats": 14, "dogs": 9, "owls": 7})
    manifest = tmp_path / "validated" / "manifest.parquet"
    write_manifest(raw, manifest)
    return raw, manifest


def run(raw: Path, manifest: Path, out: Path, workers: int = 1, shard_size: int = 8) -> dict:
    return prepare(
        manifest, raw, out, resolution=RES, val_fraction=0.3, shard_size=shard_size, workers=workers
    )


@pytest.mark.parametrize(
    ("size", "expected_side"), [((200, 100), 16), ((100, 200), 16), ((10, 7), 16), ((16, 16), 16)]
)
def test_center_crop_resize_gives_square(size: tuple[int, int], expected_side: int) -> None:
    out = center_crop_resize(Image.new("RGB", size, (10, 20, 30)), expected_side)
    assert out.size == (expected_side, expected_side)
    assert out.getpixel((8, 8)) == (10, 20, 30)


def test_center_crop_keeps_the_centre() -> None:
    # Landscape: left and right thirds black, centre white -> the crop is all white.
    arr = np.zeros((64, 192, 3), np.uint8)
    arr[:, 64:128] = 255
    out = np.asarray(center_crop_resize(Image.fromarray(arr), 32))
    assert out.min() >= 250


def test_split_of_is_a_pure_function_of_the_hash() -> None:
    assert split_of("0" * 64, 0.1) == "val"
    assert split_of("f" * 64, 0.9) == "train"
    assert split_of("8" + "0" * 63, 0.5) == "train"
    assert split_of("7f" + "0" * 62, 0.5) == "val"


def test_outputs_shapes_labels_and_meta(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    raw, manifest = dataset
    out = tmp_path / "prepared"
    metrics = run(raw, manifest, out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["resolution"] == RES and meta["layout"] == "NHWC uint8"
    assert meta["class_map"] == {"cats": 0, "dogs": 1, "owls": 2} and meta["num_classes"] == 3
    assert meta["counts"]["train"] + meta["counts"]["val"] == 30
    assert (
        metrics["n_train"] == meta["counts"]["train"] and metrics["n_val"] == meta["counts"]["val"]
    )
    assert metrics["n_classes"] == 3 and metrics["resolution"] == RES
    assert metrics["images_per_second"] > 0
    totals = {"cats": 14, "dogs": 9, "owls": 7}
    for name, n in totals.items():
        assert meta["class_counts"]["train"][name] + meta["class_counts"]["val"][name] == n
    rows = pl.read_parquet(manifest).select("path", "sha256", "class").rows()
    canonical = json.dumps(sorted(rows), ensure_ascii=False, separators=(",", ":"))
    assert meta["source_manifest_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()

    for split in ("train", "val"):
        images, labels = load_split(out, split)
        n = meta["counts"][split]
        assert images.shape == (n, RES, RES, 3) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        shards = meta["shards"][split]
        assert [s["count"] for s in shards][:-1] == [8] * (len(shards) - 1)
        assert all((out / split / s["images"]).is_file() for s in shards)
        files = read_csv(out / split / "files.csv")
        assert [r["path"] for r in files] == sorted(r["path"] for r in files)
        assert [int(r["index"]) for r in files] == list(range(n))
        for row, label in zip(files, labels, strict=True):
            assert meta["class_map"][row["class"]] == int(label) == int(row["label"])
            assert split_of(row["sha256"], 0.3) == split
            assert row["path"].startswith(row["class"] + "/")
        # The stored pixels are exactly the crop of the file named in files.csv.
        first = Image.open(raw / files[0]["path"]).convert("RGB")
        np.testing.assert_array_equal(images[0], np.asarray(center_crop_resize(first, RES)))


def test_deterministic_across_runs_and_workers(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    raw, manifest = dataset
    run(raw, manifest, tmp_path / "a", workers=1)
    run(raw, manifest, tmp_path / "b", workers=1)
    run(raw, manifest, tmp_path / "c", workers=2)
    a = tree_bytes(tmp_path / "a")
    assert len(a) == 2 * 3 + 2 * 2 + 2 + 1  # 19 train, 11 val in shards of 8; 2 csv; meta
    assert a == tree_bytes(tmp_path / "b") == tree_bytes(tmp_path / "c")


def test_adding_an_image_moves_no_existing_one(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    raw, manifest = dataset
    run(raw, manifest, tmp_path / "before")
    write_images(raw / "new", {"dogs": 3}, seed=7)  # new files under a new sub-folder
    for file in (raw / "new" / "dogs").iterdir():
        file.rename(raw / "dogs" / f"extra-{file.name}")
    write_manifest(raw, manifest)
    run(raw, manifest, tmp_path / "after")

    def split_by_path(folder: Path) -> dict[str, str]:
        return {r["path"]: s for s in ("train", "val") for r in read_csv(folder / s / "files.csv")}

    before, after = split_by_path(tmp_path / "before"), split_by_path(tmp_path / "after")
    assert len(after) == len(before) + 3
    assert all(after[path] == split for path, split in before.items())


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Upright portrait: left half red, right half blue. Stored rotated, with EXIF orientation 6
    # ("rotate 90 degrees clockwise to display"), as phone cameras write it.
    upright = np.zeros((60, 40, 3), np.uint8)
    upright[:, :20] = (255, 0, 0)
    upright[:, 20:] = (0, 0, 255)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = tmp_path / "raw"
    raw.mkdir()
    stored.save(raw / "phone.jpg", quality=95, exif=exif.tobytes())
    # Both splits must be non-empty: add a second file and put val_fraction between the two.
    Image.fromarray(upright).save(raw / "plain.png")
    frame = write_manifest(raw, tmp_path / "m.parquet")
    points = sorted(int(s[:16], 16) / 2**64 for s in frame["sha256"])
    fraction = (points[0] + points[1]) / 2
    prepare(
        tmp_path / "m.parquet",
        raw,
        tmp_path / "out",
        resolution=RES,
        val_fraction=fraction,
        shard_size=8,
        workers=1,
    )
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["class_map"] == {"": 0}
    images = {
        r["path"]: load_split(tmp_path / "out", s)[0][int(r["index"])]
        for s in ("train", "val")
        for r in read_csv(tmp_path / "out" / s / "files.csv")
    }
    expected = np.asarray(center_crop_resize(Image.fromarray(upright), RES)).astype(int)
    phone = images["phone.jpg"].astype(int)
    assert np.abs(phone - expected).mean() < 8  # JPEG loss only
    assert phone[:, 0, 0].min() > 200 and phone[:, 0, 2].max() < 60  # red on the left
    assert phone[:, -1, 2].min() > 200 and phone[:, -1, 0].max() < 60  # blue on the right


def test_existing_output_is_replaced_whole(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    raw, manifest = dataset
    out = tmp_path / "prepared"
    (out / "train").mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    (out / "train" / "images-00099.npy").write_text("old")
    run(raw, manifest, out)
    assert not (out / "stale.txt").exists() and not (out / "train" / "images-00099.npy").exists()
    assert (out / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw", "validated"]


def test_failure_leaves_existing_output_untouched(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    raw, manifest = dataset
    out = tmp_path / "prepared"
    run(raw, manifest, out)
    before = tree_bytes(out)
    victim = max((raw / "owls").iterdir())
    victim.write_bytes(b"not an image any more")
    with pytest.raises(DataError, match="changed since validation"):
        run(raw, manifest, out, workers=2)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw", "validated"]


def test_missing_manifest_says_run_validate(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ldm validate"):
        prepare(tmp_path / "nope.parquet", tmp_path, tmp_path / "out", RES, 0.1, 8, 1)
    assert not (tmp_path / "out").exists()


def test_empty_manifest_is_refused(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    raw, manifest = dataset
    pl.read_parquet(manifest).clear().write_parquet(manifest)
    with pytest.raises(DataError, match="no accepted images"):
        run(raw, manifest, tmp_path / "out")


@pytest.mark.parametrize(("fraction", "empty"), [(1e-9, "val"), (1 - 1e-9, "train")])
def test_empty_split_names_the_setting(
    dataset: tuple[Path, Path], tmp_path: Path, fraction: float, empty: str
) -> None:
    raw, manifest = dataset
    with pytest.raises(DataError, match=rf"{empty} split would be empty.*data\.val_fraction"):
        prepare(manifest, raw, tmp_path / "out", RES, fraction, 8, 1)
    assert not (tmp_path / "out").exists()
