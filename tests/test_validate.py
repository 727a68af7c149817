"""validate: one of every kind of file gets the right verdict, inputs stay untouched, GX judges."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from ldm.config import ValidateConfig
from ldm.data import inspect
from ldm.data.inspect import REASON_CODES
from ldm.data.validate import count_metrics, scan, write_tables
from ldm.errors import DataError

CFG = ValidateConfig(
    min_side=32,
    max_pixels=1_000_000,
    min_images=100,
    min_accepted_fraction=0.9,
    min_images_per_class=2,
)


def noise(seed: int, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> Image.Image:
    """A distinct picture per seed, so no two test images are accidental duplicates."""
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(rgb).convert(mode)


def make_mixed(root: Path, outside: Path) -> dict[str, str]:
    """One file of each kind under root; returns path -> expected reason_code ('' = accepted)."""
    (root / "cats").mkdir(parents=True)
    outside.mkdir()
    noise(1).save(root / "good.jpg")
    noise(2).save(root / "cats" / "good.png")
    noise(3, mode="L").save(root / "gray.png")
    noise(4).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    noise(5, mode="RGBA").save(root / "rgba.png")
    noise(6, mode="CMYK").save(root / "cmyk.jpg")
    wide = np.random.default_rng(7).integers(0, 65536, (48, 64), dtype=np.uint16)
    Image.fromarray(wide).save(root / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to show upright
    noise(8, size=(64, 48)).save(root / "rotated.jpg", exif=exif)
    noise(9).save(root / "locked.jpg")  # readable on disk; the test makes reading it fail
    (root / "notes.txt").write_text("not a picture\n")
    (root / "empty.jpg").write_bytes(b"")
    whole = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "random.png").write_bytes(np.random.default_rng(10).bytes(2000))
    noise(11, size=(20, 40)).save(root / "tiny.png")
    Image.new("1", (2000, 2000)).save(root / "huge.png")  # 4 MP > max_pixels, a few KB on disk
    noise(12).save(outside / "secret.png")
    (root / "link_out.png").symlink_to(outside / "secret.png")
    (root / "broken.png").symlink_to(root / "missing.png")
    (root / "linkdir").symlink_to(root / "cats", target_is_directory=True)
    shutil.copyfile(root / "good.jpg", root / "zz_copy.jpg")
    return {
        "good.jpg": "",
        "cats/good.png": "",
        "gray.png": "",
        "palette.png": "",
        "rgba.png": "",
        "cmyk.jpg": "",
        "sixteen.png": "",
        "rotated.jpg": "",
        "locked.jpg": "unreadable",
        "notes.txt": "not_image",
        "empty.jpg": "empty",
        "truncated.jpg": "corrupt",
        "random.png": "not_image",
        "tiny.png": "too_small",
        "huge.png": "too_large",
        "link_out.png": "symlink_outside",
        "broken.png": "broken_symlink",
        "linkdir": "symlink_dir",
        "zz_copy.jpg": "duplicate",
    }


def tree_state(*roots: Path) -> dict[str, tuple]:
    """Bytes hash, size and mtime of every entry (symlinks not followed)."""
    state = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder, name)
                st = os.lstat(path)
                digest = (
                    hashlib.sha256(path.read_bytes()).hexdigest()
                    if path.is_file() and not path.is_symlink()
                    else ""
                )
                state[str(path)] = (digest, st.st_size, st.st_mtime_ns)
    return state


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "raw"
    return root, make_mixed(root, tmp_path / "outside")


def test_sixteen_bit_fixture_is_really_sixteen_bit(mixed):
    root, _ = mixed
    with Image.open(root / "sixteen.png") as im:
        assert im.mode in ("I;16", "I")


def test_every_file_gets_its_verdict_in_process(mixed, tmp_path, monkeypatch):
    root, expected = mixed
    before = tree_state(root, tmp_path / "outside")
    real_read = inspect.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path.name == "locked.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(inspect, "read_bytes", read_bytes)
    files = scan(root, CFG, workers=1)

    codes = dict(zip(files["path"], files["reason_code"], strict=True))
    assert codes == expected
    by_path = {row["path"]: row for row in files.iter_rows(named=True)}
    assert by_path["zz_copy.jpg"]["reason"] == "exact duplicate of good.jpg"
    assert by_path["tiny.png"]["reason"] == "shorter side 20 px < validate.min_side 32"
    assert by_path["truncated.jpg"]["reason"].startswith("truncated or corrupt image data")
    assert by_path["locked.jpg"]["sha256"] == ""
    assert by_path["rotated.jpg"]["width"] == 48 and by_path["rotated.jpg"]["height"] == 64
    assert by_path["cmyk.jpg"]["mode"] == "CMYK" and by_path["cmyk.jpg"]["channels"] == 4
    assert by_path["huge.png"]["width"] == 2000
    assert by_path["cats/good.png"]["class"] == "cats" and by_path["good.jpg"]["class"] == ""
    assert all(r["reason"] for r in by_path.values() if r["status"] == "rejected")

    manifest, rejected = write_tables(files, tmp_path / "validated")
    kept, dropped = pl.read_parquet(manifest), pl.read_csv(rejected, infer_schema=False)
    assert kept.columns == dropped.columns == files.columns == list(inspect.new_row("a.png"))
    listed = kept["path"].to_list() + dropped["path"].to_list()
    assert sorted(listed) == sorted(expected) and len(set(listed)) == len(listed)
    assert sorted(os.listdir(tmp_path / "validated")) == ["manifest.parquet", "rejected.csv"]

    metrics = count_metrics(files)
    assert {f"n_rejected_{code}" for code in REASON_CODES} <= set(metrics)
    assert metrics["n_files"] == len(expected) and metrics["n_accepted"] == 8
    assert metrics["n_rejected_duplicate"] == 1 and metrics["n_classes"] == 2
    assert tree_state(root, tmp_path / "outside") == before


def test_process_pool_gives_the_same_rows(mixed, tmp_path):
    root, expected = mixed
    before = tree_state(root, tmp_path / "outside")
    ticks: list[int] = []
    files = scan(root, CFG, workers=2, progress=ticks.append)
    assert sum(ticks) == len(expected) == files.height
    codes = dict(zip(files["path"], files["reason_code"], strict=True))
    assert codes == {**expected, "locked.jpg": ""}
    assert tree_state(root, tmp_path / "outside") == before


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_unusable_folder_raises_actionable_error(tmp_path, make):
    target = tmp_path / "raw"
    if make == "file":
        target.write_text("x")
    elif make == "empty":
        (target / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="ldm sample-data"):
        scan(target, CFG, workers=1)


def test_empty_scan_still_has_the_schema(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.txt").write_text("hi")
    files = scan(tmp_path / "raw", CFG, workers=1)
    manifest, _ = write_tables(files, tmp_path / "out")
    assert pl.read_parquet(manifest).schema == files.schema
    assert count_metrics(files)["n_classes"] == 0


def test_quality_suite_passes_good_and_fails_bad(mixed, tmp_path):
    from ldm.data.quality import check_quality

    good = tmp_path / "good"
    for i in range(6):
        (good / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        noise(100 + i).save(good / f"class{i % 2}" / f"{i}.png")
    cfg = CFG.model_copy(update={"min_images": 6})
    ok = check_quality(scan(good, cfg, workers=1), cfg, tmp_path / "report_good")
    assert ok.passed and ok.failed == []
    assert ok.docs_index.is_file() and "ldm_manifest" in ok.docs_index.read_text()
    assert ok.result_json.is_file()

    root, _ = mixed
    bad = check_quality(scan(root, CFG, workers=1), CFG, tmp_path / "report_bad")
    assert not bad.passed
    assert any(line.startswith("manifest: row count >= 100 (got 9)") for line in bad.failed)
    assert any(line.startswith("files: accepted share >= 0.9") for line in bad.failed)
    assert '"success": false' in bad.result_json.read_text()

    # An empty manifest is a failed suite, not a crash.
    only_rejected = scan(root, CFG, workers=1).filter(pl.col("status") == "rejected")
    empty = check_quality(only_rejected, CFG, tmp_path / "report_empty")
    assert not empty.passed and any("row count" in line for line in empty.failed)
