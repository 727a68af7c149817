"""The bundled sample: real photos, offline, deterministic under seed, never overwriting."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path

import pytest
from PIL import Image

from ldm.data.sample import PHOTOS, load_photo, write_sample
from ldm.errors import DataError

PER_CLASS = 20


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("sample") / "raw"  # does not exist yet: write_sample creates it
    return out, write_sample(out, per_class=PER_CLASS, size=64, seed=3)


def test_cli_defaults_give_a_usable_dataset() -> None:
    from ldm.cli.tools import sample_data

    default = inspect.signature(sample_data).parameters["per_class"].default
    assert len(PHOTOS) >= 6 and default * len(PHOTOS) >= 1200


def test_photos_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sample must not download anything")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for loader in PHOTOS.values():
        photo = load_photo(loader)
        assert min(photo.shape[:2]) >= 256


def test_counts_classes_and_files(written: tuple[Path, dict[str, int]]) -> None:
    out, counts = written
    assert counts == {name: PER_CLASS for name in PHOTOS}
    assert sorted(p.name for p in out.iterdir()) == sorted(PHOTOS)
    for name in PHOTOS:
        files = sorted((out / name).iterdir())
        assert len(files) == PER_CLASS and all(f.suffix == ".jpg" for f in files)


def test_images_are_jpegs_of_the_size_and_keep_grayscale(
    written: tuple[Path, dict[str, int]],
) -> None:
    out, _ = written
    modes = {}
    for name in PHOTOS:
        with Image.open(out / name / f"{name}-0000.jpg") as im:
            assert im.format == "JPEG" and im.size == (64, 64)
            modes[name] = im.mode
    assert modes["brick"] == "L" and modes["coffee"] == "RGB"


def test_views_differ_within_a_class(written: tuple[Path, dict[str, int]]) -> None:
    out, _ = written
    contents = {p.read_bytes() for p in (out / "coffee").iterdir()}
    assert len(contents) == PER_CLASS


def test_deterministic_under_seed(tmp_path: Path, written: tuple[Path, dict[str, int]]) -> None:
    out, _ = written
    write_sample(tmp_path / "same", per_class=PER_CLASS, size=64, seed=3)
    assert tree_bytes(tmp_path / "same") == tree_bytes(out)
    write_sample(tmp_path / "other", per_class=2, size=64, seed=4)
    assert (
        tree_bytes(tmp_path / "other")["coffee/coffee-0000.jpg"]
        != tree_bytes(out)["coffee/coffee-0000.jpg"]
    )


def test_progress_reports_every_image(tmp_path: Path) -> None:
    steps: list[int] = []
    write_sample(tmp_path / "p", per_class=2, size=16, seed=0, progress=steps.append)
    assert sum(steps) == 2 * len(PHOTOS)


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="empty"):
        write_sample(tmp_path, per_class=1, size=16, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_writes_into_an_existing_empty_folder(tmp_path: Path) -> None:
    counts = write_sample(tmp_path, per_class=1, size=16, seed=0)
    assert sum(counts.values()) == len(PHOTOS)


def test_the_sample_written_for_the_paper_preset_passes_its_validation(tmp_path: Path) -> None:
    import json

    from ldm import config
    from ldm.cli.trial import ensure_images
    from ldm.data.validate import scan
    from ldm.params_file import preset_values

    repo = Path(__file__).resolve().parents[1]
    values = preset_values(repo / "presets", "paper")
    cfg = config.load(repo / "params.yaml", [f"{k}={json.dumps(v)}" for k, v in values.items()])
    raw = tmp_path / "raw"
    ensure_images(raw, sample_if_empty=True, resolution=cfg.data.resolution)
    files = scan(raw, cfg.validate_, workers=1)
    assert files.height == 1200
    assert files["reason_code"].unique().to_list() == [""]  # accepted, none too small
