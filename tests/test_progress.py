"""Progress where no terminal is watching: plain lines, often enough, with what a reader needs."""

from __future__ import annotations

import time

import pytest

from ldm import progress


def test_plain_lines_name_stage_step_loss_rate_and_eta(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line on every advance
    with progress.progress_bar("train_tokenizer@plain", 4, images_per_unit=64) as advance:
        for loss in (0.9, 0.7):
            time.sleep(0.01)
            advance(1, loss=loss)
    lines = capsys.readouterr().err.splitlines()
    middle = lines[1]
    assert "2/4" in middle and "loss 0.7" in middle and "img/s" in middle and "ETA" in middle
    assert lines[-1].startswith("train_tokenizer@plain  2/4") and "done in" in lines[-1]


def test_a_slow_step_still_gets_a_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.3)
    with progress.progress_bar("encode@plain", 10):
        time.sleep(2.5)  # one step, no advance: the heartbeat speaks for it
    beats = [line for line in capsys.readouterr().err.splitlines() if "elapsed" in line]
    assert len(beats) >= 2  # the heartbeat speaks while the step runs


def test_unknown_loss_is_left_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    with progress.progress_bar("x", 2) as advance:
        advance(1, loss=float("nan"))
    assert "loss" not in capsys.readouterr().err
