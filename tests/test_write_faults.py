"""Outputs that cannot be written: a clear error, and nothing half-written left to be read."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ldm.cli import app
from ldm.paths import Paths
from ldm.training import checkpoint

runner = CliRunner()


def test_a_file_where_the_output_folder_should_be_is_a_clear_error(prepared_copy: Path) -> None:
    (prepared_copy / "data/checkpoints").write_text("not a folder")
    result = runner.invoke(app, ["train-tokenizer", "--variant", "plain"])
    assert result.exit_code == 1
    assert "cannot write" in result.stderr and "writable" in result.stderr
    assert "Traceback" not in result.stderr
    # The training itself was kept: its last step waits in the work folder for the next run.
    work = Paths(prepared_copy).work("train_tokenizer@plain-0")
    assert checkpoint.latest_state(work).name == "step-00000004"


def test_a_full_disk_leaves_the_last_complete_checkpoint_the_one_to_resume(
    prepared_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def disk_full_on_the_second_checkpoint(tensors, path):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:  # the step-4 state's model file, after step 2's completed
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", disk_full_on_the_second_checkpoint)
    result = runner.invoke(app, ["train-tokenizer", "--variant", "plain"])
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr and "Free disk space" in result.stderr
    work = Paths(prepared_copy).work("train_tokenizer@plain-0")
    assert checkpoint.latest_state(work).name == "step-00000002"
    assert [p.name for p in work.iterdir()] == ["step-00000002"]  # no half-written folder
    assert not Paths(prepared_copy).tokenizer("plain-0").exists()  # no release either

    monkeypatch.setattr(checkpoint, "save_file", real_save)  # space freed: run again
    again = runner.invoke(app, ["train-tokenizer", "--variant", "plain"])
    assert again.exit_code == 0, again.stderr
    assert "resuming at step 2" in again.stderr
