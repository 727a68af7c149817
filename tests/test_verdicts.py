"""Verdicts a manager can trust: paired differences, the top set, three outcomes, gates read on
their interval, and the plan of a trial that could decide."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ldm.metrics.bootstrap import Resampling
from ldm.metrics.comparison import Replicate, difference, joint_draws, kid_by_subset
from ldm.report.gates import check_gates
from ldm.report.summary import Comparison
from ldm.report.verdicts import plan, z_of
from tests.test_report import gates, make_record, run_summary

ROWS, DIMS = 100, 16


def rows(rng: np.random.Generator, shift: float = 0.0, n: int = ROWS) -> np.ndarray:
    return shift + rng.standard_normal((n, DIMS))


def test_a_set_compared_with_itself_differs_by_exactly_zero_in_every_draw() -> None:
    rng = np.random.default_rng(0)
    same = Replicate(rows(rng, 0.3), rows(rng, 2.0))
    other = Replicate(rows(rng, 0.5), rows(rng, 2.0))
    found = joint_draws(
        rows(rng), rows(rng), {"a": (same,), "b": (same,), "c": (other,)}, Resampling(300, 0.9, 1)
    )
    assert np.array_equal(found["a"].gfd_draws, found["b"].gfd_draws)
    gap = difference(found["a"], found["b"], "gfd", 0.9)
    assert gap.point == 0.0 and gap.se == 0.0 and gap.lo == 0.0 == gap.hi
    # a real difference, paired, is tighter than the two gFDs' own spreads combined
    real_gap = difference(found["c"], found["a"], "gfd", 0.9)
    unpaired = math.hypot(np.std(found["a"].gfd_draws), np.std(found["c"].gfd_draws))
    assert real_gap.point > 0 and real_gap.se < unpaired


def test_two_seeds_resample_seeds_then_rows() -> None:
    rng = np.random.default_rng(1)
    val, train = rows(rng), rows(rng)
    untrained = rows(rng, 2.0)
    one = {"v": (Replicate(rows(rng, 0.4), untrained),)}
    two = {"v": (Replicate(rows(rng, 0.4), untrained), Replicate(rows(rng, 0.9), untrained))}
    single = joint_draws(val, train, one, Resampling(400, 0.9, 0))["v"]
    double = joint_draws(val, train, two, Resampling(400, 0.9, 0))["v"]
    assert len(double.seed_gfds) == 2 and double.gfd == pytest.approx(np.mean(double.seed_gfds))
    # the seeds disagree, so resampling them widens the spread beyond the rows' alone
    assert np.std(double.gfd_draws) > np.std(single.gfd_draws)


def test_kid_of_two_sets_from_one_distribution_is_near_zero_within_its_spread() -> None:
    rng = np.random.default_rng(2)
    val = rows(rng, n=300)
    sets = {"same": (Replicate(rows(rng, n=300), rows(rng)),)}
    sets["shifted"] = (Replicate(rows(rng, 1.0, n=300), rows(rng)),)
    kids = kid_by_subset(val, sets, subsets=50, subset_size=100, seed=0)
    same = kids["same"]
    assert abs(same.mean()) <= 2 * same.std(ddof=1) / math.sqrt(len(same)) + 1e-3
    assert kids["shifted"].mean() > 10 * abs(same.mean())


def test_a_gate_on_a_maximum_fails_when_the_point_passes_but_the_upper_bound_does_not() -> None:
    on = gates(max_relative_fd=0.8).staging
    (judged,) = check_gates(on, {"max_relative_fd": 0.69}, {"max_relative_fd": [0.61, 0.83]})
    assert not judged.passed and judged.bound == 0.83
    assert judged.describe() == (
        "max_relative_fd: 0.69 [0.61..0.83] <= 0.8 FAILED (judged on the upper bound 0.83)"
    )
    (inside,) = check_gates(on, {"max_relative_fd": 0.69}, {"max_relative_fd": [0.61, 0.78]})
    assert inside.passed and inside.describe() == "max_relative_fd: 0.69 [0.61..0.78] <= 0.8 passed"
    (low,) = check_gates(
        gates(min_precision=0.3).staging, {"min_precision": 0.35}, {"min_precision": [0.28, 0.4]}
    )
    assert not low.passed  # a minimum reads the lower bound
    (point,) = check_gates(on, {"max_relative_fd": 0.69}, {})  # no interval: the point decides
    assert point.passed


def test_recommend_returns_each_of_its_three_outcomes() -> None:
    clear = run_summary([make_record("best", 20.0), make_record("far", 120.0)], {})
    assert clear.outcome == "recommended" and clear.recommended == "best"
    assert clear.top_set == ["best"]
    assert clear.recommendation.startswith("recommended: best")
    assert "best better than far by" in clear.recommendation
    assert "retraining spread assumed (one seed" in clear.recommendation
    (c,) = clear.comparisons
    assert c.detectable and c.better == "best" and 0 < c.lo <= c.gfd_difference <= c.hi

    close = run_summary([make_record("a", 40.0, usd=3.0), make_record("b", 40.5, usd=1.0)], {})
    assert close.outcome == "tie" and close.recommended == "b" and set(close.top_set) == {"a", "b"}
    assert "recommending the cheaper, b" in close.recommendation
    assert close.plan is not None

    none = run_summary([make_record("a", 190.0), make_record("b", 195.0)], {"max_relative_fd": 0.5})
    assert none.outcome == "not_ready" and none.recommended is None and none.top_set == []
    assert none.recommendation.startswith("not ready")


def comparison(gap: float, s_w: float, retraining: float, min_effect: float = 0.5) -> Comparison:
    """One seed's comparison: images' spread s_w, an assumed retraining spread."""
    se = math.hypot(s_w, retraining)
    return Comparison(
        better="a",
        worse="b",
        gfd_difference=gap,
        lo=gap - 1.645 * se,
        hi=gap + 1.645 * se,
        se=se,
        level=0.9,
        min_effect=min_effect,
        min_effect_share=0.013,
        detectable=False,
        sampling_lo=gap - 1.645 * s_w,
        sampling_hi=gap + 1.645 * s_w,
        sampling_se=s_w,
        retraining_se=retraining,
        retraining_assumed=True,
        text="",
    )


def test_the_planner_states_its_model_and_its_assumption() -> None:
    s = run_summary([make_record("a", 40.0, usd=3.0), make_record("b", 40.5, usd=1.0)], {})
    a, b = s.variants
    z = z_of(0.9)
    text = plan(comparison(4.0, 1.0, 4.0), a, b, num_samples=256)
    seeds = math.ceil(z**2 * 4.0**2 / (4.0**2 - (z * 1.0) ** 2))
    assert f"needs about {seeds} training seeds per variant, {seeds - 1} more" in text
    assert "assumed (one seed measures none" in text and "√(s_w² + S²/n)" in text
    cost = (seeds - 1) * (a.per_seed_usd + b.per_seed_usd)
    assert f"${cost:,.2f}" in text or f"${cost:.2g}" in text

    # a gap inside the evaluation's own noise: seeds cannot help, more images must come first
    noisy = plan(comparison(2.0, 1.5, 4.0), a, b, num_samples=256)
    samples = math.ceil(256 * (z * 1.5 / 2.0) ** 2)
    assert "No number of seeds" in noisy and f"about {samples:,} generated images" in noisy

    small = plan(comparison(0.2, 1.5, 4.0), a, b, num_samples=256)
    assert "below report.min_effect" in small and "no budget makes it matter" in small


def test_one_seed_widens_the_verdict_by_the_retraining_it_could_not_measure() -> None:
    # a gap the images alone would call real, which an assumed retraining spread swallows
    records = [make_record("a", 40.0, usd=3.0), make_record("b", 52.0, usd=1.0)]
    s = run_summary(records, {})
    (c,) = s.comparisons
    assert c.retraining_assumed and c.sampling_lo > 0
    assert c.lo < 0 < c.hi and not c.detectable
    assert c.se == pytest.approx(math.hypot(c.sampling_se, c.retraining_se))
    assert s.outcome == "tie" and "with the retraining spread assumed" in s.recommendation
