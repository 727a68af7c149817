"""evaluate and report as a user runs them: the record, the report, the registry.

The tiny trial (`tiny_trial`, tests/conftest.py) ran every stage of both variants, evaluate
and report included, through `ldm.stages.run`: the function `ldm evaluate` and `ldm report`
call. Its outputs are read here; the report is run again, through the CLI, in a copy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from ldm.cli import app
from ldm.paths import Paths
from ldm.records import EvaluateRecord
from ldm.stages.diagnostics import NOISE_SIGMAS
from ldm.tokenizer.model import TokenizerArch
from tests.stage_run import TinyTrial

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + result.stderr
    return result.output


def test_evaluate_writes_the_record_between_its_reference_lines(tiny_trial: TinyTrial) -> None:
    """What `evaluate` wrote for each variant in the tiny trial (read, not changed)."""
    trained = tiny_trial.root
    paths = Paths(trained)
    for variant in ("plain", "aligned"):
        cell = f"{variant}-0"  # the default trial.seeds: [0]
        raw = json.loads(paths.stage_metrics(f"evaluate@{cell}").read_text())
        # Every FD is named after its network in the file itself.
        assert "fd_effnet_lite2" in raw["generation"]
        assert "rfd_effnet_lite2" in raw["tokenizer"]
        assert "perceptual_effnet_lite2" in raw["tokenizer"]  # never the loss's Lite0
        record = EvaluateRecord.model_validate(raw)
        assert record.variant == variant and record.seed == 0 and record.cell == cell
        assert record.generation.num_samples == 16
        assert 0 <= record.generation.precision <= 1 and 0 <= record.generation.recall <= 1
        assert record.reference.fd_train_val > 0 and record.reference.fd_random_latents > 0
        assert set(record.cost.stages) == {
            "validate",
            "prepare",
            "reference",
            f"train_tokenizer@{cell}",
            f"encode@{cell}",
            f"train_diffusion@{cell}",
            f"evaluate@{cell}",
        }
        assert record.cost.total.usd == pytest.approx(
            sum(c.usd for c in record.cost.stages.values())
        )
        assert record.speed.sample_images_per_second > 0
        # guidance chosen per variant on the train split, and measured at that scale
        selection = record.generation.cfg_selection
        assert set(selection) == {"1", "1.5", "2"}
        assert record.generation.cfg_scale == float(min(selection, key=selection.get))
        assert record.speed.cfg_scale == record.generation.cfg_scale
        # every class's gFD has its interval
        assert set(record.uncertainty.per_class) == set(record.generation.fd_per_class)
        assert (paths.evaluation(cell) / "samples.png").is_file()
        check_diagnostics(record, paths, cell)
    client = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlflow.db'}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name("ldm-poc").experiment_id],
        "attributes.run_name = 'evaluate@plain-0'",
    )
    assert run.data.metrics["generation/fd_effnet_lite2"] == pytest.approx(
        record_fd := json.loads(paths.stage_metrics("evaluate@plain-0").read_text())["generation"][
            "fd_effnet_lite2"
        ]
    )
    assert record_fd > 0


def check_diagnostics(record: EvaluateRecord, paths: Paths, cell: str) -> None:
    """The latent diagnostics of one cell: sane numbers, each rFD inside its interval, and the
    reconstructions' features kept row for row with the val split's."""
    found = record.diagnostics
    assert found is not None and found.feature_net == record.generation.feature_net
    assert 0 < found.frequency_cut < 1
    assert 0 <= found.latent_high_frequency <= 1 and 0 < found.image_high_frequency < 1
    channels = TokenizerArch.from_dict(
        json.loads((paths.tokenizer(cell) / "config.json").read_text())["arch"]
    ).latent_channels
    assert len(found.channel_mean) == len(found.channel_std) == channels
    assert all(s > 0 for s in found.channel_std)
    # not asserted: that rFD grows with σ (a tiny decoder need not be monotone in it)
    keys = {f"{sigma:g}" for sigma in NOISE_SIGMAS}
    assert set(found.noisy_rfd) == set(found.noisy_rfd_intervals) == keys
    for sigma, rfd in found.noisy_rfd.items():
        interval = found.noisy_rfd_intervals[sigma]
        assert math.isfinite(rfd) and rfd >= 0
        assert interval.lo <= rfd <= interval.hi
    with np.load(paths.evaluation(cell) / "features.npz") as kept:
        val = np.load(paths.reference / "val.npz")["features"]
        assert kept["reconstructed"].shape == val.shape
    metrics = record.metrics()
    assert metrics["diagnostics/noisy_rfd/0.25"] == found.noisy_rfd["0.25"]
    assert metrics["diagnostics/noisy_rfd/0.25_lo"] == found.noisy_rfd_intervals["0.25"].lo
    assert metrics["diagnostics/channel_std_max"] == max(found.channel_std)


def test_report_registers_each_generator_once_and_recommends(trial_copy: Path) -> None:
    """The tiny trial's report registered both generators; `ldm report` run twice more, with
    gates any tiny model passes so that it recommends one, registers nothing new."""
    trained, paths = trial_copy, Paths(trial_copy)
    client = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlflow.db'}")
    registered = client.search_model_versions("name = 'ldm-generator'")
    assert sorted(v.tags["variant"] for v in registered) == ["aligned", "plain"]
    invoke("report", "--set", "promotion.gates.staging.max_relative_fd=1000")
    summary = json.loads((paths.reports / "summary.json").read_text())
    assert {v["variant"] for v in summary["variants"]} == {"plain", "aligned"}
    assert summary["recommended"] in {"plain", "aligned"}
    html = (paths.reports / "report.html").read_text()
    assert "<img" in html and 'src="http' not in html
    registry = json.loads((paths.reports / "registry.json").read_text())
    assert set(registry["versions"]) == {"plain-0", "aligned-0"}  # one version per cell
    assert registry["candidate"] == registry["versions"][summary["recommended"] + "-0"]
    assert set(registry["versions"].values()) == {str(v.version) for v in registered}

    candidate = client.get_model_version_by_alias("ldm-generator", "candidate")
    assert str(candidate.version) == registry["candidate"]
    assert candidate.tags["variant"] == summary["recommended"] and candidate.tags["seed"] == "0"
    # the verdict travels with the version, and names one of its outcomes
    assert summary["outcome"] in {"recommended", "tie"}
    assert candidate.tags["decision"] == summary["recommendation"]
    assert json.loads(candidate.tags["gate_intervals"])["max_relative_fd"][1] > 0

    invoke("report", "--set", "promotion.gates.staging.max_relative_fd=1000")
    versions = client.search_model_versions("name = 'ldm-generator'")
    assert len(versions) == 2  # nothing changed: nothing new registered

    # A trial that ends "not ready" takes `candidate` away, and says so in registry.json.
    invoke("report", "--set", "promotion.gates.staging.max_relative_fd=0.0001")
    assert json.loads((paths.reports / "summary.json").read_text())["recommended"] is None
    registry = json.loads((paths.reports / "registry.json").read_text())
    assert registry["candidate"] is None
    assert registry["candidate_withdrawn"] == str(candidate.version)
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("ldm-generator", "candidate")
