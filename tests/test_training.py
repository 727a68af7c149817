"""The loop toolkit: the learning-rate schedule, extended runs, the resume point it lives in."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ldm.training.distributed import Dist
from ldm.training.resume import NonFiniteLoss, resume, save_resume_point
from ldm.training.schedule import FLOOR, Schedule, Segment, resumed_schedule


def formula(lr: float, kind: str, warmup: int, step: int, total: int) -> float:
    """The rate every run followed before schedules were saved, written out once more."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if kind == "constant":
        return lr * warm
    progress = max(0.0, step - warmup) / max(1, total - warmup)
    return lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@pytest.mark.parametrize("kind", ["cosine", "constant"])
def test_a_new_run_follows_the_formula_bit_for_bit(kind: str) -> None:
    for lr in (3e-3, 2e-4, 1.0, 0.7):
        for warmup in (0, 1, 10, 250):
            for total in (1, 40, 600, 1000):
                schedule = Schedule.new(lr, kind, warmup, total)
                for step in range(0, total + 5, max(1, total // 97)):
                    assert schedule.rate(step) == formula(lr, kind, warmup, step, total)


def test_the_rate_warms_up_then_decays_to_a_tenth() -> None:
    schedule = Schedule.new(1.0, "cosine", 10, 100)
    assert schedule.rate(0) == pytest.approx(0.1)
    assert schedule.rate(9) == pytest.approx(1.0)
    assert schedule.rate(100) == pytest.approx(FLOOR)
    assert Schedule.new(1.0, "constant", 10, 100).rate(50) == pytest.approx(1.0)


def test_an_extension_keeps_the_past_and_decays_from_the_rate_reached() -> None:
    first = Schedule.new(1.0, "cosine", 10, 100)
    extended = Schedule.new(1.0, "cosine", 10, 100)
    extended.extend(60, 200)
    for step in range(60):
        assert extended.rate(step) == first.rate(step)
    reached = first.rate(60)
    assert extended.rate(60) == pytest.approx(reached)
    for step in range(60, 201):
        cosine = 0.5 * (1 + math.cos(math.pi * (step - 60) / (200 - 60)))
        assert extended.rate(step) == pytest.approx(FLOOR + (reached - FLOOR) * cosine)
    assert extended.rate(250) == pytest.approx(FLOOR)
    assert extended.first_horizon == 100  # what alignment phases are shares of


def test_extending_a_decayed_run_holds_the_floor_and_a_same_length_resume_changes_nothing() -> None:
    schedule = Schedule.new(2.0, "cosine", 0, 50)
    schedule.extend(50, 80)
    assert all(schedule.rate(s) == pytest.approx(2.0 * FLOOR) for s in range(50, 81))
    again = Schedule.new(2.0, "cosine", 0, 50)
    again.extend(30, 50)  # resumed after a kill, same length
    assert again.segments == [Segment(0, 50, 1.0)]


def test_an_extension_inside_warm_up_is_the_longer_run_from_the_start() -> None:
    schedule = Schedule.new(1.0, "cosine", 10, 100)
    schedule.extend(4, 300)
    longer = Schedule.new(1.0, "cosine", 10, 300)
    assert [schedule.rate(s) for s in range(300)] == [longer.rate(s) for s in range(300)]


def test_two_extensions_stack_and_survive_the_resume_state() -> None:
    schedule = Schedule.new(1.0, "cosine", 2, 10)
    schedule.extend(6, 20)
    past = [schedule.rate(s) for s in range(20)]
    state = {"step": 14, "schedule": schedule.state()}
    again = resumed_schedule(1.0, "cosine", 2, 30, state, "tokenizer.steps")
    assert [s.first for s in again.segments] == [0, 6, 14]
    assert [again.rate(s) for s in range(14)] == past[:14]
    # Resumed twice at one step (killed before the next resume point): one segment there.
    state = {"step": 14, "schedule": again.state()}
    twice = resumed_schedule(1.0, "cosine", 2, 40, state, "tokenizer.steps")
    assert [s.first for s in twice.segments] == [0, 6, 14]
    assert twice.rate(14) == pytest.approx(again.rate(14))


def test_an_old_resume_point_is_one_segment_over_its_recorded_steps() -> None:
    settings = json.dumps({"diffusion": {"steps": 40, "checkpoint_every": 10}})
    state = {"step": 20, "settings": settings}
    schedule = resumed_schedule(1.0, "cosine", 0, 60, state, "diffusion.steps")
    old = Schedule.new(1.0, "cosine", 0, 40)
    assert [schedule.rate(s) for s in range(20)] == [old.rate(s) for s in range(20)]
    assert schedule.segments[-1] == Segment(20, 60, pytest.approx(old.rate(20)))
    unrecorded = resumed_schedule(1.0, "cosine", 0, 60, {"step": 20}, "diffusion.steps")
    assert unrecorded.segments == [Segment(0, 60, 1.0)]


def test_resume_loads_what_save_wrote_and_a_changed_identity_starts_over(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    identity, settings = {"architecture": "linear"}, {"section": {"steps": 4}}
    extras = {"schedule": Schedule.new(0.1, "cosine", 0, 4).state()}
    modules, saved = {"model": model}, {"optimizer": optimizer}
    save_resume_point(tmp_path / "w", 2, identity, settings, modules, saved, extras)

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    notices: list[str] = []
    args = (identity, settings, 6, notices.append, Dist(), {"model": fresh})
    state = resume(tmp_path / "w", *args, {"optimizer": fresh_opt})
    assert state["step"] == 2 and state["schedule"] == extras["schedule"]
    torch.testing.assert_close(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == 1
    assert "resuming at step 2" in notices[0]

    args = ({"architecture": "other"}, settings, 6, notices.append, Dist(), {"model": fresh})
    assert resume(tmp_path / "w", *args, {}) is None
    assert (tmp_path / "w.set-aside-at-step-2").is_dir() and not (tmp_path / "w").exists()


def test_a_non_finite_loss_names_the_step_and_the_last_good_checkpoint(tmp_path: Path) -> None:
    error = NonFiniteLoss.at(7, "the loss is nan", tmp_path, "lower x.lr")
    assert str(error) == (
        "step 7: the loss is nan; training stopped. The last good checkpoint is (none yet); "
        "lower x.lr, then run again to resume."
    )
