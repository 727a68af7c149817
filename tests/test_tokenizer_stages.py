"""train_tokenizer per variant as a user runs it: files, metrics, MLflow records.

The tiny trial (`tiny_trial`, tests/conftest.py) ran train_tokenizer for each variant through
`ldm.stages.run`, the function `ldm train-tokenizer` calls per variant: what it wrote is read
here. The failing commands run in a project of their own that holds the prepared data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from ldm import stages
from ldm.cli import app
from ldm.config import Config
from ldm.paths import Paths
from ldm.stages.result import StageResult
from ldm.tokenizer.release import load_tokenizer
from tests.stage_run import TinyTrial

runner = CliRunner()
QUALITY = ("psnr", "ssim", "rfd_effnet_lite2", "cka_effnet_lite0", "perceptual_effnet_lite2")


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + result.stderr


def test_both_variants_release_a_self_describing_tokenizer(tiny_trial: TinyTrial) -> None:
    trained = tiny_trial.root
    paths = Paths(trained)
    for variant in ("plain", "aligned"):
        cell = f"{variant}-0"  # the default trial.seeds: [0]
        folder = paths.tokenizer(cell)
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        config = json.loads((folder / "config.json").read_text())
        assert config["variant"] == variant and config["seed"] == 0
        assert len(config["latent_std"]) == 8
        assert config["steps"] == 4  # the same budget for both
        assert config["regularisers"] == {}  # neither uses equivariance or latent denoising
        model = load_tokenizer(folder)  # rebuilt from the folder alone
        z = model.encode(torch.zeros(2, 3, 16, 16))
        assert z.shape == (2, 8, 4, 4)
        assert model.decode(z).shape == (2, 3, 16, 16)
        metrics = json.loads(paths.stage_metrics(f"train_tokenizer@{cell}").read_text())
        assert all(name in metrics for name in QUALITY), sorted(metrics)
        assert 0 < metrics["ssim"] <= 1 and metrics["psnr"] > 0
        # The last step stays as a resume point, so that raising the steps extends the run.
        assert (paths.work(f"train_tokenizer@{cell}") / "step-00000004").is_dir()
    released = json.loads((paths.tokenizer("aligned-0") / "config.json").read_text())
    assert released["foundation"] == "effnet_lite0"

    client = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ldm-poc")
    (run,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'train_tokenizer@aligned-0'"
    )
    losses = client.get_metric_history(run.info.run_id, "train/vf")
    assert [m.step for m in losses] == [4]  # logged every 10 steps and at the last one
    assert run.data.params["align.cos_margin"] == "0.5"
    assert run.data.params["variant.align"] == "True"
    images = client.list_artifacts(run.info.run_id, "images")
    assert any("reconstructions" in a.path for a in images)
    (plain,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'train_tokenizer@plain-0'"
    )
    assert not client.get_metric_history(plain.info.run_id, "train/vf")  # no VF loss


def test_without_a_variant_the_command_runs_every_cell_in_turn(
    prepared_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ldm train-tokenizer` hands each cell (variant and seed) of params.yaml to
    `ldm.stages.run`, the function the tiny trial trained them with, in DVC's matrix order;
    `--set` goes along with it, and `--variant` or `--seed` alone leave the other open."""
    calls = []

    def run(stage: str, cfg: Config, paths: Paths, cell: str, command: list[str]) -> StageResult:
        calls.append((stage, cell, command, cfg.tokenizer.steps, paths.root))
        return StageResult({"psnr": 20.0})

    monkeypatch.setattr(stages, "run", run)
    seeds = "trial.seeds=[0, 3]"
    invoke("train-tokenizer", "--set", "tokenizer.steps=6", "--set", seeds)
    sets = ["--set", "tokenizer.steps=6", "--set", seeds]
    assert calls == [
        (
            "train_tokenizer",
            f"{v}-{s}",
            ["train-tokenizer", "--variant", v, "--seed", str(s), *sets],
            6,
            prepared_copy.resolve(),
        )
        for v in ("plain", "aligned")
        for s in (0, 3)
    ]
    calls.clear()
    invoke("train-tokenizer", "--seed", "3", "--set", seeds)
    assert [cell for _, cell, *_ in calls] == ["plain-3", "aligned-3"]
    calls.clear()
    invoke("train-tokenizer", "--variant", "aligned", "--set", seeds)
    assert [cell for _, cell, *_ in calls] == ["aligned-0", "aligned-3"]


def test_an_unknown_variant_names_the_known_ones(prepared_copy: Path) -> None:
    result = runner.invoke(app, ["train-tokenizer", "--variant", "nope"])
    assert result.exit_code == 2
    assert "plain" in result.stderr and "aligned" in result.stderr


def test_a_seed_not_in_trial_seeds_is_refused_naming_the_setting(prepared_copy: Path) -> None:
    result = runner.invoke(app, ["train-tokenizer", "--seed", "1"])
    assert result.exit_code == 2
    assert "--seed 1" in result.stderr and "trial.seeds" in result.stderr
    assert not Paths(prepared_copy).tokenizer("plain-1").exists()


def test_missing_foundation_weights_name_the_setting_and_fallback(prepared_copy: Path) -> None:
    result = runner.invoke(
        app, ["train-tokenizer", "--variant", "aligned", "--set", "align.foundation=dinov2_vitl14"]
    )
    assert result.exit_code == 1
    assert "align.foundation_weights" in result.stderr and "effnet_lite0" in result.stderr
