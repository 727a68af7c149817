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


def test_a_resumed_loop_counts_rate_and_eta_from_where_it_resumed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    lines = progress.PlainLines("train_diffusion@plain", 1000, images_per_unit=64)
    lines.advance(600, already_done=True)  # an earlier process trained these
    assert "ETA" not in lines.line() and "img/s" not in lines.line()
    clock[0] += 10.0
    for _ in range(100):
        lines.advance(1, loss=0.5)
    # 100 steps of 64 images in 10 s; the 300 left at that pace take 30 s.
    assert lines.line() == "train_diffusion@plain  700/1000  loss 0.5  640.0 img/s  ETA 30s"


def test_the_terminal_bar_takes_a_resumed_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True)
    with progress.progress_bar("train", 10, images_per_unit=4) as advance:
        advance(6, already_done=True)
        advance(1, loss=0.3)
    assert "7/10" in capsys.readouterr().err
