"""The `ldm` command: fast help, stage commands, exit codes and messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ldm.cli import app
from tests.conftest import copy_outputs, make_tiny_project
from tests.stage_run import TinyTrial

runner = CliRunner()
HEAVY = ("torch", "mlflow", "prefect", "great_expectations", "dvc", "polars", "PIL")


COMMANDS = {
    "validate",
    "prepare",
    "reference",
    "train-tokenizer",
    "encode",
    "train-diffusion",
    "evaluate",
    "report",
    "sample",
    "run",
    "preset",
    "sample-data",
    "show-config",
    "ui",
    "promote",
    "rollback",
    "models",
    "serve",
}


def listed_commands(help_text: str) -> set[str]:
    """The first word of each row of the help's Commands panel."""
    panel = help_text.split("Commands")[1]
    return set(re.findall(r"^│ ([a-z][a-z-]*) ", panel, flags=re.M))


def test_help_lists_every_stage_and_imports_no_heavy_library() -> None:
    result = runner.invoke(app, ["--help"], terminal_width=120)
    assert result.exit_code == 0
    assert listed_commands(result.output) >= COMMANDS
    for command in COMMANDS:  # each one answers its own --help
        assert runner.invoke(app, [command, "--help"]).exit_code == 0, command
    probe = f"import sys, ldm.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_bad_set_fails_before_any_work(project: Path) -> None:
    result = runner.invoke(app, ["validate", "--set", "validate.min_sid=3"])
    assert result.exit_code == 2
    assert "validate.min_sid" in result.stderr
    assert not (project / "data" / "validated").exists()
    assert not (project / "mlflow.db").exists()


def test_validate_then_prepare_write_their_outputs(
    tiny_prepared: TinyTrial, sample_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate's outputs as the tiny trial's `validate` wrote them (through `ldm.stages.run`,
    what `ldm validate` calls); then `ldm prepare` with a --set, in a project of its own that
    holds them."""
    manifest = pl.read_parquet(tiny_prepared.root / "data/validated/manifest.parquet")
    assert manifest.height == 120
    metrics = json.loads((tiny_prepared.root / "data/metrics/validate.json").read_text())
    assert metrics["n_accepted"] == 120 and metrics["quality_passed"] == 1.0

    project = tmp_path / "project"
    make_tiny_project(project, sample_images)
    copy_outputs(tiny_prepared.root, project, ["data/validated", "data/metrics/validate.json"])
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["prepare", "--set", "data.resolution=24"])
    assert result.exit_code == 0, result.output
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert meta["resolution"] == 24
    assert meta["num_classes"] == 6


def test_failed_quality_suite_exits_1_with_the_failed_expectations(project: Path) -> None:
    result = runner.invoke(
        app,
        [
            "validate",
            "--set",
            "validate.min_images=1000",
            "--set",
            "validate.min_images_per_class=50",
        ],
    )
    assert result.exit_code == 1
    assert "row count" in result.stderr
    assert "n_images" in result.stderr or "per class" in result.stderr
    # The evidence stays for the user to read.
    assert (project / "data/validated/manifest.parquet").is_file()
    assert (project / "data/validated/report/gx_validation.json").is_file()


def test_prepare_without_manifest_says_what_to_run(project: Path) -> None:
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 1
    assert "ldm validate" in result.stderr


def test_empty_raw_dir_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["validate", "--set", f"data.raw_dir={empty}"])
    assert result.exit_code == 1
    assert "ldm sample-data" in result.stderr


def test_sample_data_refuses_a_folder_with_files(tmp_path: Path) -> None:
    target = tmp_path / "images"
    result = runner.invoke(app, ["sample-data", str(target), "--per-class", "3", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "18 images in 6 classes" in result.output
    again = runner.invoke(app, ["sample-data", str(target), "--per-class", "3"])
    assert again.exit_code == 1
    assert len(list(target.rglob("*.jpg"))) == 18


def test_show_config_prints_the_overridden_value(project: Path) -> None:
    result = runner.invoke(app, ["show-config", "--set", "data.resolution=48"])
    assert result.exit_code == 0
    assert "resolution: 48" in result.output


def test_run_names_broken_symlinks_before_dvc_trips_on_them(project: Path) -> None:
    link = project / "data/raw/brick/dangling.jpg"
    link.symlink_to(project / "no-such-file.jpg")
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 1
    assert "broken symlink" in result.stderr and "dangling.jpg" in result.stderr
    assert link.is_symlink()  # reported, never removed


def test_run_without_images_and_without_sample_says_where_to_put_them(
    project: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "nothing-here"
    result = runner.invoke(app, ["run", "--no-sample-if-empty", "--set", f"data.raw_dir={empty}"])
    assert result.exit_code == 1
    assert "holds no files" in result.stderr
    assert "raw_dir: data/raw" in (project / "params.yaml").read_text()  # nothing written


def test_preset_writes_its_values_into_params_yaml(project: Path) -> None:
    import shutil

    from ldm.config import load

    shutil.copytree(Path(__file__).resolve().parents[1] / "presets", project / "presets")
    result = runner.invoke(app, ["preset", "paper"])
    assert result.exit_code == 0, result.output
    cfg = load(project / "params.yaml")
    assert cfg.diffusion.model == "B/1" and cfg.data.resolution == 256
    unknown = runner.invoke(app, ["preset", "huge"])
    assert unknown.exit_code == 2 and "paper" in unknown.stderr
