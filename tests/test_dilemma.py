"""The dilemma grid: the preset's eight variants, the paired rFD gaps across widths, and the
report's three answers (wider latent, regulariser per width, the pick), each saying when the
trial cannot tell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ldm import config
from ldm.errors import DataError
from ldm.metrics.bootstrap import Resampling
from ldm.metrics.comparison import Replicate, reconstruction_draws
from ldm.report import write_report
from ldm.report.dilemma import grid_of, grid_point_of
from ldm.report.features import ReportFeatures
from tests.test_report import HEADER, PRICES, REPORT, falling_curve, gates, make_record

REPO = Path(__file__).resolve().parents[1]
ROWS, DIMS = 150, 6


def test_the_dilemma_preset_writes_eight_variants_that_validate() -> None:
    from ldm.params_file import preset_values

    values = preset_values(REPO / "presets", "dilemma")
    cfg = config.load(REPO / "params.yaml", [f"{k}={json.dumps(v)}" for k, v in values.items()])
    grid = grid_of(cfg.variants)
    assert len(grid) == 8 and cfg.trial.seeds == [0]
    regularisers = {"plain", "VF", "equivariance", "latent denoising"}
    assert set(grid.values()) == {(4, d, r) for d in (8, 32) for r in regularisers}
    # every variant trains on the one budget, and each switches on one regulariser at most
    for name, v in cfg.variants.items():
        assert v.align + v.equivariance + v.latent_denoising <= 1, name


def test_a_variant_is_placed_by_its_preset_its_width_and_its_switches() -> None:
    off = {"VF": False, "equivariance": False, "latent denoising": False}
    assert grid_point_of("a", "f16d32", None, off) == (16, 32, "plain")
    both = off | {"VF": True, "latent denoising": True}
    assert grid_point_of("b", "f4d8", 32, both) == (4, 32, "VF + latent denoising")
    with pytest.raises(ValueError, match="does not spell f and d"):
        grid_point_of("c", "custom", None, off)


def test_reconstruction_gaps_pair_the_same_images() -> None:
    rng = np.random.default_rng(0)
    val = rng.standard_normal((ROWS, DIMS))
    close = val + 0.1 * rng.standard_normal((ROWS, DIMS))
    resampling = Resampling(200, 0.9, 0)
    found = reconstruction_draws(val, {"a": [close], "b": [close.copy()]}, resampling)
    # the same reconstructions: every draw gives both the same rFD, so the gap has no spread
    assert np.array_equal(found["a"].draws, found["b"].draws)
    assert found["a"].rfd == pytest.approx(found["b"].rfd)
    with pytest.raises(DataError, match="do not match the 150 val rows"):
        reconstruction_draws(val, {"a": [close[:-1]]}, resampling)


def grid_features(records: list, recon_noise: dict[str, float], draws: int = 300) -> ReportFeatures:
    """Generated rows shifted by the record's gFD (as in test_report), and reconstruction rows
    that are the val rows plus noise of the given size: more noise, a worse rFD."""
    rng = np.random.default_rng(3)
    val, train = rng.standard_normal((ROWS, DIMS)), rng.standard_normal((ROWS, DIMS))
    variants = {}
    for record in records:
        shift = np.sqrt(record.generation.fd / 5.0 / DIMS)
        generated = shift + rng.standard_normal((ROWS, DIMS))
        untrained = 3.0 + rng.standard_normal((ROWS, DIMS))
        noise = recon_noise[record.variant]
        reconstructed = val + noise * rng.standard_normal((ROWS, DIMS))
        variants[record.variant] = (Replicate(generated, untrained, reconstructed),)
    return ReportFeatures(
        network="effnet_lite2",
        val=val,
        train=train,
        variants=variants,
        draws=draws,
        level=0.9,
        seed=0,
        kid_subset_size=50,
    )


GRID = {
    "d8": (4, 8, "plain"),
    "d8-vf": (4, 8, "VF"),
    "d32": (4, 32, "plain"),
    "d32-vf": (4, 32, "VF"),
}


def test_the_report_answers_the_three_questions_of_a_grid(tmp_path: Path) -> None:
    # The paper's pattern, made large: d = 32 reconstructs far better and, plain, generates far
    # worse; VF brings d = 32 back level with d = 8.
    gfds = {"d8": 40.0, "d8-vf": 40.5, "d32": 90.0, "d32-vf": 41.0}
    noise = {"d8": 1.0, "d8-vf": 1.0, "d32": 0.2, "d32-vf": 0.25}
    records = [
        make_record(name, gfd, usd=1.0 + 0.1 * i) for i, (name, gfd) in enumerate(gfds.items())
    ]
    curves = {r.variant: falling_curve(r.variant) for r in records}
    kwargs = {"report": REPORT, "gates": gates(), "prices": PRICES, "header": HEADER}
    features = grid_features(records, noise)
    out = tmp_path / "reports"
    summary = write_report(out, records, curves, features, **kwargs, grid=GRID)
    d = summary.dilemma
    assert d is not None and (out / "dilemma.png").stat().st_size > 0
    assert "dilemma.png" in summary.files
    by_regulariser = {a.regulariser: a for a in d.wider}
    plain, vf = by_regulariser["plain"], by_regulariser["VF"]
    # plain: the dilemma, both directions detectable; wide minus narrow reads negative for rFD
    assert plain.reconstruction.detectable and plain.reconstruction.difference < 0
    assert plain.generation.detectable and plain.pays_off is False
    assert plain.reconstruction.lo <= plain.reconstruction.difference <= plain.reconstruction.hi
    # VF: generation level across widths, so the trial cannot tell and prices the trial that would
    assert vf.pays_off is None and vf.plan is not None
    assert "the paper's dilemma" in d.wider_text and "cannot tell with VF" in d.wider_text
    # per width: at d = 32 VF beats plain; at d = 8 the two are not told apart
    tops = {w.width: w for w in d.per_width}
    assert tops[32].top_set == ["d32-vf"] and "beats d32" in tops[32].text
    assert set(tops[8].top_set) == {"d8", "d8-vf"} and tops[8].plan is not None
    # the pick is the trial's own verdict: the top set over every passing variant, cheapest
    assert summary.recommended in summary.top_set and summary.recommended in d.pick_text
    page = (out / "report.md").read_text()
    assert "## Which latent space" in page and "Does a wider latent pay off here?" in page
    assert "](dilemma.png)" in page
    # every grid point carries its rFD interval for the chart (these records hold no gFD one)
    for p in d.grid:
        assert p.rfd_lo <= p.rfd <= p.rfd_hi and p.gfd_lo is None


def test_a_trial_of_one_width_has_no_dilemma_section(tmp_path: Path) -> None:
    records = [make_record("plain", 40.0), make_record("aligned", 45.0)]
    curves = {r.variant: falling_curve(r.variant) for r in records}
    kwargs = {"report": REPORT, "gates": gates(), "prices": PRICES, "header": HEADER}
    features = grid_features(records, {"plain": 1.0, "aligned": 1.0})
    grid = {"plain": (4, 8, "plain"), "aligned": (4, 8, "VF")}
    summary = write_report(tmp_path / "r", records, curves, features, **kwargs, grid=grid)
    assert summary.dilemma is None and "dilemma.png" not in summary.files
    assert not (tmp_path / "r" / "dilemma.png").exists()
    assert "Which latent space" not in (tmp_path / "r" / "report.md").read_text()


def answer(regulariser: str, rfd_gap: float, rfd_detectable: bool, pays: bool | None):
    from ldm.report.grid import Gap, WidthAnswer

    def gap(number: str, diff: float, detectable: bool) -> Gap:
        lo, hi = (diff - 1, diff + 1) if detectable else (diff - 9, diff + 9)
        return Gap(
            number=number,
            narrow="n",
            wide="w",
            difference=diff,
            lo=lo,
            hi=hi,
            detectable=detectable,
        )

    gen = gap("gFD", {True: -5.0, False: 5.0, None: 0.5}[pays], pays is not None)
    return WidthAnswer(
        regulariser=regulariser,
        narrow="n",
        wide="w",
        narrow_width=8,
        wide_width=32,
        reconstruction=gap("rFD", rfd_gap, rfd_detectable),
        generation=gen,
        pays_off=pays,
        text="",
        plan=None,
    )


def test_the_dilemma_is_named_only_where_both_directions_are_real() -> None:
    from ldm.report.dilemma import wider_text

    text = wider_text([answer("plain", -4.0, True, False), answer("VF", -0.8, False, False)])
    # plain reconstructs detectably better and generates worse: the dilemma; VF's rFD gain is
    # within its noise, so VF only generates worse
    assert "worse with plain, VF (while reconstructing better with plain: the paper's" in text
    text = wider_text([answer("equivariance", 1.0, False, True), answer("VF", 0.0, False, None)])
    assert text.startswith("A wider latent generates detectably better with equivariance")
    assert "cannot tell with VF" in text and "dilemma" not in text
