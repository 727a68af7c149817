"""The trial report: files, self-contained HTML, projections, gates and the recommendation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ldm.config import CostConfig, Gates, GatesConfig, ReportConfig
from ldm.errors import LdmError
from ldm.metrics.comparison import Replicate
from ldm.records import ConvergenceCurve, EvaluateRecord, Interval, StageCost, Uncertainty
from ldm.report import ReportHeader, ReportSummary, summarise, summary_rows, write_report
from ldm.report.features import ReportFeatures
from ldm.report.projection import fit_power_law, project

NET = "effnet_lite2"
PRICES = CostConfig(gpu_hour_usd=2.5, cpu_hour_usd=0.05, bill_cpu_on_gpu=False)
REPORT = ReportConfig(
    target_fd=60.0, projection_budget_multiple=10, min_effect=0.013, seed_spread_prior=None
)
HEADER = ReportHeader(
    trial="acme <widgets>",
    created="2025-06-01T12:00:00+00:00",
    git_commit="0123456789abcdef",
    n_train=900,
    n_val=100,
    classes=["bolt", "nut"],
    resolution=32,
)


def gates(**staging: float) -> GatesConfig:
    off = dict.fromkeys(Gates.model_fields)
    return GatesConfig(
        staging=Gates(**(off | staging)), production=Gates(**(off | {"max_relative_fd": 0.5}))
    )


def stage_cost(usd: float, gpu_hours: float = 0.0, energy: float | None = None) -> StageCost:
    return StageCost(
        wall_seconds=3600 * max(gpu_hours, 0.1),
        cpu_hours=0.2,
        gpu_hours=gpu_hours,
        usd=usd,
        energy_kwh=energy,
        device_kind="NVIDIA H100" if gpu_hours else "cpu",
        device_count=1 if gpu_hours else 0,
    )


def make_record(
    variant: str,
    gfd: float = 40.0,
    *,
    rfd: float = 5.0,
    psnr: float = 25.0,
    floor: float = 10.0,
    ceiling: float = 200.0,
    precision: float = 0.6,
    usd: float = 1.0,
    gpu_hours: float = 0.0,
    energy: float | None = None,
    feature_net: str = NET,
) -> EvaluateRecord:
    stages = {
        "validate": stage_cost(0.01),
        f"train_tokenizer@{variant}": stage_cost(0.2),
        f"train_diffusion@{variant}": stage_cost(usd - 0.21, gpu_hours, energy),
    }
    total = stages["validate"]
    for cost in list(stages.values())[1:]:
        total = total + cost
    return EvaluateRecord.model_validate(
        {
            "variant": variant,
            "tokenizer": {
                "psnr": psnr,
                "ssim": 0.8,
                "perceptual": 0.1,
                "perceptual_net": "lpips_vgg",
                "rfd": rfd,
                "feature_net": NET,
                "cka": 0.4,
                "cka_foundation": "effnet_lite0",
            },
            "generation": {
                "feature_net": feature_net,
                "num_samples": 600,
                "fd": gfd,
                "precision": precision,
                "recall": 0.5,
                "density": 0.9,
                "coverage": 0.7,
                "nearest_k": 5,
                "fd_per_class": {"bolt": gfd, "nut": gfd},
            },
            "reference": {"feature_net": NET, "fd_train_val": floor, "fd_random_latents": ceiling},
            "speed": {
                "solver": "euler",
                "steps": 50,
                "cfg_scale": 4.0,
                "device_kind": "cpu",
                "sample_images_per_second": 12.0,
                "encode_images_per_second": 300.0,
                "decode_images_per_second": 250.0,
            },
            "cost": {
                "total": total.model_dump(),
                "stages": {k: v.model_dump() for k, v in stages.items()},
            },
        }
    )


def make_curve(
    variant: str,
    compute: list[float],
    fd: list[float],
    unit: str = "cpu_hours",
) -> ConvergenceCurve:
    points = [
        {"step": 100 * (i + 1), "compute_hours": c, "fd": f}
        for i, (c, f) in enumerate(zip(compute, fd, strict=True))
    ]
    return ConvergenceCurve(
        variant=variant, feature_net=NET, compute_unit=unit, num_samples=128, points=points
    )


def power_law(floor: float, a: float, b: float, compute: np.ndarray, noise: float = 0.0):
    rng = np.random.default_rng(1)
    return list(floor + a * compute ** (-b) * np.exp(noise * rng.standard_normal(len(compute))))


COMPUTE = np.geomspace(0.05, 2.0, 8)


FLOOR, A, B = 10.0, 100.0, 0.8  # meets the target 60 at c = (100 / 50)^(1 / 0.8) = 2.38
TRUTH_C = (A / (REPORT.target_fd - FLOOR)) ** (1 / B)


def falling_curve(variant: str, unit: str = "cpu_hours") -> ConvergenceCurve:
    return make_curve(variant, list(COMPUTE), power_law(FLOOR, A, B, COMPUTE), unit)


ROWS, DIMS = 120, 8


def features_for(records: list[EvaluateRecord], spread: float = 1.0) -> ReportFeatures:
    """Rows whose gFDs rank as the records' do: a variant's generated rows are shifted from
    the real ones' distribution by a mean whose squared length grows with its record's gFD."""
    rng = np.random.default_rng(7)
    real = lambda: rng.standard_normal((ROWS, DIMS))  # noqa: E731
    val, train = real(), real()
    variants = {}
    for record in records:
        shift = np.sqrt(record.generation.fd / 5.0 / DIMS)
        generated = shift + spread * rng.standard_normal((ROWS, DIMS))
        untrained = 3.0 + rng.standard_normal((ROWS, DIMS))
        variants[record.variant] = (Replicate(generated, untrained),)
    return ReportFeatures(
        network=NET,
        val=val,
        train=train,
        variants=variants,
        draws=200,
        level=0.9,
        seed=0,
        kid_subset_size=50,
    )


def img_sources(page: str) -> list[str]:
    return re.findall(r"<img[^>]*\bsrc=\"([^\"]*)\"", page)


@pytest.mark.parametrize("n_variants", [1, 2, 6])
def test_report_writes_self_contained_files_for_any_number_of_variants(
    tmp_path: Path, n_variants: int
) -> None:
    names = [f"f16d{d}-{kind}" for d in (16, 32, 64) for kind in ("plain", "aligned")]
    names = names[:n_variants]
    records = [make_record(n, 70.0 + 5 * i, rfd=2.0 + i, psnr=24 + i) for i, n in enumerate(names)]
    # the last variant's generator trained on a GPU: a second convergence panel
    curves = {
        n: falling_curve(n, "gpu_hours" if i == 5 else "cpu_hours") for i, n in enumerate(names)
    }
    out = tmp_path / "reports"
    summary = write_report(
        out,
        records,
        curves,
        features_for(records),
        report=REPORT,
        gates=gates(),
        prices=PRICES,
        header=HEADER,
    )

    for name in summary.files:
        assert (out / name).stat().st_size > 0, name
    for png in ("tradeoff.png", "convergence.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert not re.search(r"src=\"https?:", page) and "<link" not in page
    assert not re.search(r"\b(href|srcset)=|@import|url\(", page)
    sources = img_sources(page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "acme &lt;widgets&gt;" in page  # header text shown, not read as markup
    text = (out / "report.md").read_text()
    assert "![" in text and "(tradeoff.png)" in text
    for name in names:
        assert name in text
    assert ReportSummary.read(out / "summary.json") == summary
    assert [v.variant for v in summary.variants] == names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_failed_rewrite_keeps_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records, curves = [make_record("a")], {"a": falling_curve("a")}
    kwargs = {"report": REPORT, "gates": gates(), "prices": PRICES, "header": HEADER}
    out = tmp_path / "reports"
    write_report(out, records, curves, features_for(records), **kwargs)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("ldm.report.write.convergence_chart", broken)
    with pytest.raises(RuntimeError):
        write_report(out, [make_record("a", 20.0)], curves, features_for(records), **kwargs)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["reports"]


def test_projection_recovers_a_power_law() -> None:
    noisy = make_curve("a", list(COMPUTE), power_law(FLOOR, A, B, COMPUTE, noise=0.03))
    fit = fit_power_law(
        [p.compute_hours for p in noisy.points], [p.fd for p in noisy.points], FLOOR
    )
    assert fit is not None
    assert fit.a == pytest.approx(A, rel=0.1) and fit.b == pytest.approx(B, abs=0.05)

    p = project(noisy, floor=FLOOR, target_fd=60.0, price_per_hour=0.05, budget_multiple=10)
    assert p.status == "projected"
    assert p.compute_hours == pytest.approx(TRUTH_C, rel=0.15)
    assert p.compute_low < TRUTH_C < p.compute_high
    assert p.usd == pytest.approx(p.compute_hours * 0.05)

    exact = project(falling_curve("a"), FLOOR, 60.0, 0.05, 10, final_fd=65.0)
    assert exact.compute_hours == pytest.approx(TRUTH_C, rel=1e-6)
    assert exact.compute_low == pytest.approx(TRUTH_C, rel=1e-3)


def test_projection_says_when_it_cannot_promise() -> None:
    flat = make_curve("a", list(COMPUTE), power_law(80.0, 1.0, 0.0, COMPUTE, noise=0.02))
    p = project(flat, floor=10.0, target_fd=60.0, price_per_hour=0.05, budget_multiple=10)
    assert p.status == "not_reached" and "not reached within 10× this budget" in p.text
    assert p.compute_hours is None

    slow = make_curve("a", list(COMPUTE), power_law(10.0, 300.0, 0.1, COMPUTE))
    p = project(slow, floor=10.0, target_fd=60.0, price_per_hour=0.05, budget_multiple=10)
    assert p.status == "not_reached" and "not reached within 10× this budget" in p.text

    below = project(
        falling_curve("a"), floor=10.0, target_fd=8.0, price_per_hour=1, budget_multiple=3
    )
    assert below.status == "not_reached" and "not reached within 3× this budget" in below.text
    assert "floor" in below.text

    two = make_curve("a", [0.5, 1.0], [150.0, 120.0])
    p = project(two, floor=10.0, target_fd=60.0, price_per_hour=0.05, budget_multiple=10)
    assert p.status == "too_few_points" and "too few points to project" in p.text

    done = make_curve("a", [0.5, 1.0, 2.0], [150.0, 55.0, 52.0])
    p = project(done, floor=10.0, target_fd=60.0, price_per_hour=2.0, budget_multiple=10)
    assert p.status == "reached" and p.compute_hours == 1.0 and p.usd == 2.0
    # the evaluation (more samples than a curve point) already meets the target
    p = project(
        falling_curve("a"), FLOOR, 60.0, price_per_hour=2.0, budget_multiple=10, final_fd=58.0
    )
    assert p.status == "reached" and p.compute_hours == 2.0 and "evaluated gFD 58.0" in p.text


def run_summary(records: list[EvaluateRecord], staging: dict[str, float]) -> ReportSummary:
    curves = {r.variant: falling_curve(r.variant) for r in records}
    return summarise(
        records, curves, features_for(records), REPORT, gates(**staging), PRICES, HEADER
    )


def test_gates_refuse_and_allow_as_configured() -> None:
    # relative FD: (gFD - 10) / (200 - 10): 0.5 for gFD 105, 0.9 for gFD 181
    s = run_summary(
        [make_record("good", 105.0), make_record("bad", 181.0)], {"max_relative_fd": 0.8}
    )
    by_name = {v.variant: v for v in s.variants}
    assert by_name["good"].passed_staging and not by_name["bad"].passed_staging
    assert s.failed_gates == {"bad": [by_name["bad"].staging[0].text]}
    assert "max_relative_fd" in s.failed_gates["bad"][0]


def test_recommendation_is_the_passing_variant_with_the_lowest_gfd() -> None:
    records = [
        make_record("sharp-but-narrow", 20.0, precision=0.3),  # best gFD, fails precision
        make_record("costly", 25.0, usd=5.0),
        make_record("cheap", 25.0, usd=2.0),  # ties on gFD with "costly", cheaper
        make_record("worse", 35.0),
    ]
    s = run_summary(records, {"min_precision": 0.5})
    # equal gFDs cannot be told apart: the cheaper of the two is recommended, and says why
    assert s.recommended == "cheap" and s.outcome == "tie" and s.top_set[:2] == ["cheap", "costly"]
    assert s.recommendation.startswith("no detectable difference between cheap")
    assert "recommending the cheaper, cheap" in s.recommendation
    assert list(s.failed_gates) == ["sharp-but-narrow"]


def test_no_passing_variant_means_not_ready_naming_the_failed_gates(tmp_path: Path) -> None:
    records = [make_record("a", 30.0, precision=0.2), make_record("b", 190.0, precision=0.3)]
    staging = {"min_precision": 0.5, "max_relative_fd": 0.8}
    s = run_summary(records, staging)
    assert s.recommended is None and s.recommendation.startswith("not ready")
    assert "min_precision" in s.failed_gates["a"][0]
    assert {g.split(":")[0] for g in s.failed_gates["b"]} == {"min_precision", "max_relative_fd"}

    out = tmp_path / "reports"
    curves = {r.variant: falling_curve(r.variant) for r in records}
    write_report(
        out,
        records,
        curves,
        features_for(records),
        report=REPORT,
        gates=gates(**staging),
        prices=PRICES,
        header=HEADER,
    )
    text = (out / "report.md").read_text()
    assert "**Not ready.**" in text and "- b: max_relative_fd" in text
    assert summary_rows(ReportSummary.read(out / "summary.json")).recommendation.startswith(
        "not ready"
    )


def test_summary_rows_carry_the_reference_lines_and_the_verdict() -> None:
    s = run_summary([make_record("a", 30.0, floor=12.5, ceiling=180.0), make_record("b", 50.0)], {})
    table = summary_rows(s)
    assert any("gFD (effnet_lite2)" in c for c in table.columns)
    assert any("rFD (effnet_lite2)" in c for c in table.columns)
    row_a = dict(zip(table.columns, table.rows[0], strict=True))
    # No intervals in these records: the number alone, and the note says why.
    assert row_a["gFD (effnet_lite2)"] == "30.0" and "No intervals" in table.note
    # The reference lines cannot be read as an interval.
    assert row_a["floor / ceiling"] == "12.5 / 180"
    assert row_a["recommended"] == "yes" and table.rows[1][-1] == ""
    assert row_a["PSNR (dB)"] == "25.0" and row_a["cost (USD)"] == "$1.00"
    assert table.recommendation == s.recommendation


def test_energy_nothing_measured_is_absent_not_zero(tmp_path: Path) -> None:
    records = [make_record("cpu"), make_record("gpu", gpu_hours=1.0, energy=0.7, usd=3.0)]
    curves = {"cpu": falling_curve("cpu"), "gpu": falling_curve("gpu", "gpu_hours")}
    out = tmp_path / "reports"
    s = write_report(
        out,
        records,
        curves,
        features_for(records),
        report=REPORT,
        gates=gates(),
        prices=PRICES,
        header=HEADER,
    )
    lines = (out / "report.md").read_text().splitlines()

    def energy_cell(stage: str) -> str:
        row = next(line for line in lines if line.startswith(f"| {stage} |"))
        return [cell.strip() for cell in row.strip("|").split("|")][5]

    assert energy_cell("train_diffusion@cpu") == "—"
    assert energy_cell("train_diffusion@gpu") == "0.700"
    data = json.loads((out / "summary.json").read_text())
    energies = {v["variant"]: v["energy_kwh"] for v in data["variants"]}
    assert energies == {"cpu": None, "gpu": 0.7}
    assert s.variants[1].compute_unit == "gpu_hours"
    assert s.trial_usd == pytest.approx(0.01 + 0.2 + 0.79 + 0.2 + 2.79)  # validate once


def test_inputs_that_cannot_be_compared_are_refused() -> None:
    with pytest.raises(LdmError, match="different networks"):
        run_summary([make_record("a"), make_record("b", feature_net="inception")], {})
    with pytest.raises(LdmError, match="no convergence curve"):
        summarise(
            [make_record("a")],
            {},
            features_for([make_record("a")]),
            REPORT,
            gates(),
            PRICES,
            HEADER,
        )
    with pytest.raises(LdmError, match="more than one"):
        run_summary([make_record("a"), make_record("a")], {})


def test_importing_the_report_loads_no_heavy_library() -> None:
    probe = (
        "import sys, ldm.report; "
        "print([m for m in ('numpy', 'matplotlib', 'markdown_it') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_self_graded_variant_is_marked_wherever_its_numbers_appear(tmp_path: Path) -> None:
    graded = make_record("aligned", 30.0).model_copy(update={"self_graded": True})
    records = [make_record("plain", 40.0), graded]
    table = summary_rows(run_summary(records, {}))
    assert [row[0] for row in table.rows] == ["plain", "aligned (self-graded)"]
    out = tmp_path / "reports"
    curves = {r.variant: falling_curve(r.variant) for r in records}
    write_report(
        out,
        records,
        curves,
        features_for(records),
        report=REPORT,
        gates=gates(),
        prices=PRICES,
        header=HEADER,
    )
    text = (out / "report.md").read_text()
    assert "aligned (recommended) (self-graded)" in text and "**self-graded**" in text


def test_intervals_reach_the_summary_and_the_terminal_rows() -> None:
    intervals = {
        "fd": Interval(se=2.0, lo=26.5, hi=33.2, bias=6.0),
        "relative_fd": Interval(se=0.01, lo=0.09, hi=0.12, bias=0.03),
        "precision": Interval(se=0.02, lo=0.71, hi=0.78, bias=0.0),
    }
    uncertainty = Uncertainty(draws=1000, level=0.9, seed=0, intervals=intervals)
    record = make_record("a", 30.0).model_copy(update={"uncertainty": uncertainty})
    assert record.metrics()["generation/fd_effnet_lite2_hi"] == 33.2  # beside the metric
    assert record.metrics()["reference/relative_fd_lo"] == 0.09
    s = run_summary([record], {})
    (v,) = s.variants
    assert v.intervals["gfd"].lo == 26.5 and v.interval_level == 0.9
    assert "recall" not in v.intervals  # not measured, not invented
    table = summary_rows(s)
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["gFD (effnet_lite2)"] == "30.0 [26.5..33.2]"
    assert row["relative FD"].endswith("[0.090..0.12]") and "90% bootstrap" in table.note


def test_the_report_says_when_the_curve_and_the_evaluation_differ_in_guidance(
    tmp_path: Path,
) -> None:
    record = make_record("a", 30.0)
    chosen = record.generation.model_copy(update={"cfg_scale": 1.0})
    record = record.model_copy(update={"generation": chosen})
    curve = falling_curve("a").model_copy(update={"cfg_scale": 1.5})
    out = tmp_path / "reports"
    write_report(
        out,
        [record],
        {"a": curve},
        features_for([record]),
        report=REPORT,
        gates=gates(),
        prices=PRICES,
        header=HEADER,
    )
    text = (out / "report.md").read_text()
    assert "a (curve 1.5, evaluation 1)" in text
    assert "| guidance |" in text  # the glance table's column
