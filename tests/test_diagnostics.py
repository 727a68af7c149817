"""The latent diagnostics as records carry them: JSON round trip, older records, MLflow's flat
metrics, a variant's seeds merged, and the report's table."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean, stdev

import numpy as np
import pytest

from ldm.paths import Paths
from ldm.records import EvaluateRecord, Interval, LatentDiagnostics, Uncertainty
from ldm.report import write_report
from ldm.report.diagnostics import diagnostics_section
from ldm.report.seeds import merge
from ldm.stages.kept_features import evaluation_features
from tests.test_report import (
    HEADER,
    NET,
    PRICES,
    REPORT,
    falling_curve,
    features_for,
    gates,
    make_record,
)

SIGMAS = ("0", "0.1", "0.25", "0.5")


def diagnostics(rfd: float = 5.0, high: float = 0.3, stds: tuple[float, ...] = (0.5, 1.5)):
    """Noisy rFDs rising from `rfd`, each inside an interval 1 below and 2 above it."""
    noisy = {s: rfd * (1 + 2 * float(s)) for s in SIGMAS}
    return LatentDiagnostics(
        frequency_cut=0.5,
        latent_high_frequency=high,
        image_high_frequency=0.2,
        channel_mean=[0.1 * (i - 1) for i in range(len(stds))],
        channel_std=list(stds),
        noisy_rfd=noisy,
        noisy_rfd_intervals={
            s: Interval(se=0.5, lo=v - 1.0, hi=v + 2.0, bias=0.3) for s, v in noisy.items()
        },
        feature_net=NET,
    )


def diagnosed(variant: str, seed: int = 0, **kwargs: float) -> EvaluateRecord:
    """A cell's record (test_report's) with diagnostics and the bootstrap they were drawn with."""
    found = Uncertainty(draws=200, level=0.9, seed=0, intervals={})
    return make_record(variant).model_copy(
        update={"seed": seed, "diagnostics": diagnostics(**kwargs), "uncertainty": found}
    )


def test_a_record_round_trips_its_diagnostics_and_older_records_load_without() -> None:
    record = diagnosed("plain")
    raw = json.loads(json.dumps(record.model_dump()))
    # the distances are named after their network in the file, as every FD of the record
    assert "noisy_rfd_effnet_lite2" in raw["diagnostics"]
    assert "noisy_rfd" not in raw["diagnostics"]
    assert EvaluateRecord.model_validate(raw) == record
    older = make_record("plain").model_dump()
    assert "diagnostics" in older  # written as null by now; files from before lack the key
    del older["diagnostics"]
    assert EvaluateRecord.model_validate(older).diagnostics is None


def test_mlflow_gets_the_diagnostics_flat() -> None:
    metrics = diagnosed("plain", rfd=4.0).metrics()
    assert metrics["diagnostics/latent_high_frequency"] == 0.3
    assert metrics["diagnostics/image_high_frequency"] == 0.2
    assert metrics["diagnostics/noisy_rfd/0"] == 4.0
    assert metrics["diagnostics/noisy_rfd/0.5"] == 8.0
    assert metrics["diagnostics/noisy_rfd/0.5_lo"] == 7.0
    assert metrics["diagnostics/noisy_rfd/0.5_hi"] == 10.0
    assert metrics["diagnostics/channel_std/1"] == 1.5
    assert metrics["diagnostics/channel_std_min"] == 0.5
    assert metrics["diagnostics/channel_mean_max_abs"] == pytest.approx(0.1)
    assert all(isinstance(v, float) for v in metrics.values())
    assert not any(k.startswith("diagnostics/") for k in make_record("plain").metrics())


def test_seeds_merge_into_means_spreads_and_widened_intervals() -> None:
    cells = [
        diagnosed("plain", 0, rfd=4.0, high=0.2, stds=(0.5, 1.5)),
        diagnosed("plain", 1, rfd=6.0, high=0.4, stds=(2.5, 0.7)),
    ]
    merged = merge(cells)
    d = merged.diagnostics
    assert d.latent_high_frequency == pytest.approx(0.3)
    assert merged.seed_spread["latent_high_frequency"] == pytest.approx(stdev([0.2, 0.4]))
    # channels sorted per seed, then averaged rank by rank: (0.5, 1.5) and (0.7, 2.5)
    assert d.channel_std == pytest.approx([0.6, 2.0])
    for sigma in SIGMAS:
        points = [c.diagnostics.noisy_rfd[sigma] for c in cells]
        assert d.noisy_rfd[sigma] == pytest.approx(fmean(points))
        assert merged.seed_spread[f"noisy_rfd/{sigma}"] == pytest.approx(stdev(points))
        # at least as wide as each seed's own interval around the mean: retraining adds
        interval = d.noisy_rfd_intervals[sigma]
        assert interval.lo < d.noisy_rfd[sigma] - 1.0 and interval.hi > d.noisy_rfd[sigma] + 2.0
    # one seed without diagnostics: the variant has none
    assert (
        merge([cells[0], make_record("plain").model_copy(update={"seed": 1})]).diagnostics is None
    )


def test_the_report_explains_each_variant_s_latent_space(tmp_path: Path) -> None:
    records = [diagnosed("plain", rfd=4.0), diagnosed("aligned", rfd=3.0, high=0.1)]
    section = diagnostics_section(records)
    assert section.startswith("## Why a latent space generates as it does")
    header, _, *rows = [line for line in section.splitlines() if line.startswith("|")][:4]
    assert "rFD σ = 0.25" in header and "CKA (effnet\\_lite0)" in header
    assert rows[0].startswith("| plain | 30% | 20% | 0.500..1.50 | 0.100 | 4.00 [3.00..6.00] |")
    assert "| 8.00 [7.00..10.0] | 0.40 |" in rows[0]
    assert "fragile to the errors a generator makes" in section
    assert "detail the pixels do not have" in section
    # records from before the diagnostics: the variant is left out, or the table altogether
    assert "| plain |" not in diagnostics_section([make_record("plain"), records[1]])
    assert diagnostics_section([make_record("plain")]) == ""

    out = tmp_path / "reports"
    curves = {r.variant: falling_curve(r.variant) for r in records}
    kwargs = {"report": REPORT, "gates": gates(), "prices": PRICES, "header": HEADER}
    write_report(out, records, curves, features_for(records), **kwargs)
    text = (out / "report.md").read_text()
    assert (
        text.index("## Results at a glance")
        < text.index("## Why a latent space")
        < (text.index("## Reconstruction vs generation"))
    )
    assert "Why a latent space generates as it does" in (out / "report.html").read_text()


def test_kept_features_carry_the_reconstructions_where_an_evaluation_kept_them(
    tmp_path: Path,
) -> None:
    paths = Paths(tmp_path)
    rows = {name: np.ones((4, 3)) for name in ("generated", "untrained")}
    for cell, extra in (("old-0", {}), ("new-0", {"reconstructed": np.zeros((5, 3))})):
        paths.evaluation(cell).mkdir(parents=True)
        np.savez(
            paths.evaluation(cell) / "features.npz",
            labels=np.zeros(0),
            network=np.array(NET),
            **rows,
            **extra,
        )
    assert evaluation_features(paths, "old-0", NET)["reconstructed"] is None
    assert evaluation_features(paths, "new-0", NET)["reconstructed"].shape == (5, 3)
