"""train_tokenizer per variant as a user runs it: files, metrics, MLflow records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from ldm.cli import app
from ldm.paths import Paths
from ldm.tokenizer.release import load_tokenizer

runner = CliRunner()
QUALITY = ("psnr", "ssim", "rfd_effnet_lite2", "cka_effnet_lite0", "perceptual_effnet_lite2")


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + result.stderr


@pytest.fixture
def prepared(project: Path) -> Path:
    invoke("validate")
    invoke("prepare")
    invoke("reference")
    return project


def test_both_variants_release_a_self_describing_tokenizer(prepared: Path) -> None:
    invoke("train-tokenizer")  # every variant: plain, then aligned
    paths = Paths(prepared)
    for variant in ("plain", "aligned"):
        folder = paths.tokenizer(variant)
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        config = json.loads((folder / "config.json").read_text())
        assert config["variant"] == variant and len(config["latent_std"]) == 8
        assert config["steps"] == 4  # the same budget for both
        model = load_tokenizer(folder)  # rebuilt from the folder alone
        z = model.encode(torch.zeros(2, 3, 16, 16))
        assert z.shape == (2, 8, 4, 4)
        assert model.decode(z).shape == (2, 3, 16, 16)
        metrics = json.loads(paths.stage_metrics(f"train_tokenizer@{variant}").read_text())
        assert all(name in metrics for name in QUALITY), sorted(metrics)
        assert 0 < metrics["ssim"] <= 1 and metrics["psnr"] > 0
        # The last step stays as a resume point, so that raising the steps extends the run.
        assert (paths.work(f"train_tokenizer@{variant}") / "step-00000004").is_dir()
    released = json.loads((paths.tokenizer("aligned") / "config.json").read_text())
    assert released["foundation"] == "effnet_lite0"

    client = MlflowClient(tracking_uri=f"sqlite:///{prepared / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ldm-poc")
    (run,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'train_tokenizer@aligned'"
    )
    losses = client.get_metric_history(run.info.run_id, "train/vf")
    assert [m.step for m in losses] == [4]  # logged every 10 steps and at the last one
    assert run.data.params["align.cos_margin"] == "0.5"
    assert run.data.params["variant.align"] == "True"
    images = client.list_artifacts(run.info.run_id, "images")
    assert any("reconstructions" in a.path for a in images)
    (plain,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'train_tokenizer@plain'"
    )
    assert not client.get_metric_history(plain.info.run_id, "train/vf")  # no VF loss


def test_an_unknown_variant_names_the_known_ones(prepared: Path) -> None:
    result = runner.invoke(app, ["train-tokenizer", "--variant", "nope"])
    assert result.exit_code == 1
    assert "plain" in result.stderr and "aligned" in result.stderr


def test_missing_foundation_weights_name_the_setting_and_fallback(prepared: Path) -> None:
    result = runner.invoke(
        app, ["train-tokenizer", "--variant", "aligned", "--set", "align.foundation=dinov2_vitl14"]
    )
    assert result.exit_code == 1
    assert "align.foundation_weights" in result.stderr and "effnet_lite0" in result.stderr
