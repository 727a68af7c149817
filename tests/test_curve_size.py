"""Comparable numbers on the convergence curve: points with intervals, a floor and a target at
the curve's own sample size, and the report's charts framing every interval and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ldm.config import SampleConfig
from ldm.diffusion.probe import ConvergenceProbe
from ldm.metrics.bootstrap import Resampling
from ldm.metrics.comparison import Replicate
from ldm.metrics.frechet import frechet_distance_between
from ldm.metrics.uncertainty import mean_fd_of_subsets, random_subsets
from ldm.records import ConvergenceCurve, EvaluateRecord, Interval, Uncertainty
from ldm.report import summarise
from ldm.report.charts import _figure, _tradeoff_panel, convergence_chart
from ldm.report.features import ReportFeatures
from ldm.report.projection import SEED, SHIFT_SUBSETS, curve_size_shift, project
from tests.test_report import HEADER, PRICES, REPORT, gates, make_curve, make_record

A, B = 100.0, 0.8
COMPUTE = np.geomspace(0.05, 2.0, 8)


def curve_towards(towards: float, **fields: object) -> ConvergenceCurve:
    """Points exactly on FD = towards + A c^-B, with the curve's other fields as given."""
    fd = list(towards + A * COMPUTE ** (-B))
    return make_curve("a", list(COMPUTE), fd).model_copy(update=fields)


@pytest.mark.parametrize("dims", [8, 64])  # the covariance route and the row route
def test_the_subset_mean_is_the_mean_fd_of_those_subsets(dims: int) -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((40, dims)), 1.5 * rng.standard_normal((30, dims)) + 0.2
    subsets = random_subsets(np.random.default_rng(7), len(fake), 12, 5)
    direct = np.mean([frechet_distance_between(real, fake[rows]) for rows in subsets])
    assert mean_fd_of_subsets(real, fake, 12, 5, seed=7) == pytest.approx(direct, rel=1e-9)
    # every row in every subset: the FD of the whole set
    whole = mean_fd_of_subsets(real, fake, len(fake), 3, seed=7)
    assert whole == pytest.approx(frechet_distance_between(real, fake), rel=1e-9)
    with pytest.raises(ValueError, match="subsets of 31 rows"):
        mean_fd_of_subsets(real, fake, 31, 5, seed=7)


def test_the_shift_is_the_final_generators_fd_at_the_curve_size_minus_its_gfd() -> None:
    rng = np.random.default_rng(1)
    val, generated = rng.standard_normal((50, 16)), rng.standard_normal((40, 16)) + 0.3
    curve = curve_towards(20.0, floor=20.0, num_samples=10)
    at_ten = mean_fd_of_subsets(val, generated, 10, SHIFT_SUBSETS, SEED)
    shift = curve_size_shift(curve, val, generated)
    assert shift == pytest.approx(at_ten - frechet_distance_between(val, generated), rel=1e-12)
    assert shift > 0  # an FD of fewer rows reads higher
    # nothing to compare at the curve's size: no floor of its own, or fewer evaluated rows
    assert curve_size_shift(curve.model_copy(update={"floor": None}), val, generated) is None
    assert curve_size_shift(curve.model_copy(update={"num_samples": 41}), val, generated) is None


def test_a_curve_with_its_own_floor_meets_the_target_moved_to_its_size() -> None:
    curve = curve_towards(20.0, floor=20.0, num_samples=48)
    p = project(
        curve, 10.0, target_fd=60.0, price_per_hour=1.0, budget_multiple=10, target_shift=10.0
    )
    assert p.status == "projected"
    assert p.target_at_sample_size == 70.0 and p.target_fd == 60.0
    assert p.floor == 20.0 and p.sample_size == 48
    assert p.compute_hours == pytest.approx((A / (70.0 - 20.0)) ** (1 / B), rel=1e-6)
    assert "errs towards more compute" not in p.text
    # the last point, above target_fd, meets the moved target: reached there
    last = curve.points[-1]
    reached = project(curve, 10.0, 60.0, 1.0, 10, target_shift=last.fd - 60.0 + 1e-9)
    assert reached.status == "reached" and reached.compute_hours == last.compute_hours
    assert "the target moved to N = 48" in reached.text


def test_an_old_curve_loads_and_projects_as_before() -> None:
    points = [
        {"step": 100 * (i + 1), "compute_hours": c, "fd": 10.0 + A * c ** (-B)}
        for i, c in enumerate(COMPUTE.tolist())
    ]  # as curves were written before intervals and their own floor
    text = json.dumps(
        {
            "variant": "a",
            "feature_net": "effnet_lite2",
            "compute_unit": "cpu_hours",
            "num_samples": 48,
            "points": points,
        }
    )
    loaded = ConvergenceCurve.model_validate_json(text)
    assert loaded.floor is None and loaded.points[0].fd_lo is None
    p = project(
        loaded, 10.0, target_fd=60.0, price_per_hour=1.0, budget_multiple=10, target_shift=7.0
    )
    assert p.target_at_sample_size is None and p.floor == 10.0
    assert p.compute_hours == pytest.approx((A / (60.0 - 10.0)) ** (1 / B), rel=1e-6)
    assert "errs towards more compute" in p.text
    plain = project(loaded, 10.0, target_fd=60.0, price_per_hour=1.0, budget_multiple=10)
    assert plain == p


def test_the_summary_moves_the_target_by_the_final_generators_shift() -> None:
    rng = np.random.default_rng(2)
    val, train = rng.standard_normal((60, 16)), rng.standard_normal((60, 16))
    generated = rng.standard_normal((40, 16)) + 0.2
    features = ReportFeatures(
        network="effnet_lite2",
        val=val,
        train=train,
        variants={"a": (Replicate(generated, rng.standard_normal((40, 16)) + 3.0),)},
        draws=20,
        level=0.9,
        seed=0,
        kid_subset_size=10,
    )
    curve = curve_towards(20.0, floor=20.0, num_samples=10)
    summary = summarise(
        [make_record("a", 70.0)], {"a": curve}, features, REPORT, gates(), PRICES, HEADER
    )
    p = summary.variants[0].projection
    shift = curve_size_shift(curve, val, generated)
    assert p.target_at_sample_size == pytest.approx(REPORT.target_fd + shift, rel=1e-12)


class Shrink(nn.Module):
    """A velocity field with no weights: enough for the sampler to draw distinct images."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        return 0.5 * x


def test_the_probe_records_each_point_inside_its_interval_and_resumes_old_points() -> None:
    settings = SampleConfig(
        steps=2,
        solver="euler",
        cfg_scale=1.0,
        cfg_interval=(0.0, 1.0),
        shift=1.0,
        batch_size=8,
        seed=0,
    )
    val = np.random.default_rng(3).standard_normal((40, 48))

    def features(images: Tensor) -> np.ndarray:  # (N, 3, 4, 4) -> (N, 48)
        return images.flatten(1).double().numpy()

    def probe() -> ConvergenceProbe:
        return ConvergenceProbe(
            features=features,
            reference=val,
            resampling=Resampling(50, 0.9, 0),
            floor=1.5,
            metric="curve/fd_test",
            num_samples=16,
            num_classes=0,
            latent_shape=(3, 4, 4),
            sample_cfg=settings,
            decode=torch.tanh,
            device=torch.device("cpu"),
        )

    first = probe()
    first.load(json.dumps([{"step": 2, "compute_hours": 0.05, "fd": 9.0}]))  # an older point
    fd = first(Shrink(), step=4, compute_hours=0.1)
    newest = first.points[-1]
    assert newest["fd_lo"] <= newest["fd"] == fd <= newest["fd_hi"]
    assert newest["fd_lo"] < newest["fd_hi"]
    second = probe()
    second.load(first.state())
    assert second.points == first.points
    curve = ConvergenceCurve(
        variant="a",
        feature_net="test",
        compute_unit="cpu_hours",
        num_samples=16,
        points=second.points,
        floor=second.floor,
    )
    assert curve.points[0].fd_lo is None and curve.points[1].fd_hi == newest["fd_hi"]


def with_intervals(record: EvaluateRecord, **intervals: tuple[float, float]) -> EvaluateRecord:
    spread = {k: Interval(se=1.0, lo=lo, hi=hi, bias=0.0) for k, (lo, hi) in intervals.items()}
    uncertainty = Uncertainty(draws=100, level=0.9, seed=0, intervals=spread)
    return record.model_copy(update={"uncertainty": uncertainty})


def test_the_tradeoff_panel_frames_every_interval_floor_and_ceiling() -> None:
    records = [
        # its interval reaches above every ceiling
        with_intervals(make_record("a", 150.0, rfd=2.0, ceiling=180.0), fd=(120.0, 260.0)),
        # a horizontal bar only where the record holds an interval of the x number
        with_intervals(make_record("b", 40.0, rfd=4.0, floor=30.0), fd=(35, 46), rfd=(1.0, 9.0)),
        make_record("c", 60.0, rfd=5.0, ceiling=220.0),  # an old record: no bars
    ]
    ax = _figure(6, 4).subplots()
    _tradeoff_panel(ax, records, "rfd", "rFD")
    bottom, top = ax.get_ylim()
    assert bottom == 0.0 and top > 260.0
    xmin, xmax = ax.get_xlim()
    assert xmin < 1.0 and xmax > 9.0
    assert len(ax.containers) == 2  # one error bar per record with an interval
    x_bars = [c for c in ax.containers if c.has_xerr]
    assert len(x_bars) == 1 and all(c.has_yerr for c in ax.containers)
    ax = _figure(6, 4).subplots()
    _tradeoff_panel(ax, [make_record("d", 5.0, floor=30.0, ceiling=20.0)], "psnr", "PSNR")
    assert ax.get_ylim()[1] > 30.0  # the floor, above everything else


def test_the_convergence_chart_draws_bands_and_frames_the_lines_at_the_curves_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = []
    monkeypatch.setattr("ldm.report.charts._save", lambda fig, path: figures.append(fig))
    banded = curve_towards(20.0, floor=14.0, num_samples=48, interval_level=0.9)
    points = [
        p.model_copy(update={"fd_lo": 0.0 if i == 0 else 0.8 * p.fd, "fd_hi": 1.3 * p.fd})
        for i, p in enumerate(banded.points)
    ]  # the first band end at 0, where a log axis has nothing
    banded = banded.model_copy(update={"points": points})
    old = curve_towards(10.0).model_copy(update={"variant": "b"})
    records = [make_record("a", 40.0, floor=12.0), make_record("b", 30.0, floor=12.0)]
    curves = {"a": banded, "b": old}
    projections = {
        "a": project(banded, 12.0, 60.0, 1.0, 10, target_shift=25.0),
        "b": project(old, 12.0, 60.0, 1.0, 10),
    }
    convergence_chart(records, curves, projections, 60.0, tmp_path / "c.png")
    (ax,) = figures[0].axes
    bottom, top = ax.get_ylim()
    assert 0 < bottom < 12.0 and top > max(p.fd_hi for p in points)
    assert len(ax.collections) == 1  # one band: the old curve has none
    labels = ax.get_legend().get_texts()
    assert "target gFD 60 at N=600 → 85.0 at N=48 (a)" in [t.get_text() for t in labels]
    assert "floor: train vs val at N=48" in [t.get_text() for t in labels]
