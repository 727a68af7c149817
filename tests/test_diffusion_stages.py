"""encode, train_diffusion and `ldm sample` as a user runs them.

The tiny trial (`tiny_trial`, tests/conftest.py) ran encode and train_diffusion for each
variant through `ldm.stages.run`, the function `ldm encode` and `ldm train-diffusion` call: what
they wrote is read here, and `ldm sample` draws from the generator it trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from ldm.cli import app
from ldm.data.latents import open_latents
from ldm.paths import Paths
from ldm.records import ConvergenceCurve
from tests.conftest import copy_outputs
from tests.stage_run import TinyTrial

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + result.stderr
    return result.output


@pytest.fixture
def tokenized(prepared_copy: Path, tiny_trial: TinyTrial) -> Path:
    """A project where the plain variant's tokenizer was trained, and nothing after it."""
    copy_outputs(tiny_trial.root, prepared_copy, ["data/checkpoints/tokenizer-plain-0"])
    return prepared_copy


def test_encode_train_and_sample_one_variant(
    tiny_trial: TinyTrial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = tiny_trial.root
    paths = Paths(trained)
    meta = json.loads((paths.latents("plain-0") / "meta.json").read_text())
    n_train = json.loads((paths.prepared / "meta.json").read_text())["counts"]["train"]
    assert meta["count"] == 2 * n_train  # every image and its mirror
    assert meta["shape"] == [8, 4, 4]
    assert sum(s["count"] for s in meta["shards"]) == meta["count"]
    assert all(s["count"] <= 64 for s in meta["shards"])  # prepare.shard_size in the tiny project
    latents, labels = open_latents(paths.latents("plain-0"), meta)
    every = latents[torch.arange(len(latents))]  # (2N, 8, 4, 4)
    # Normalised by the tokenizer's own statistics: about zero mean and unit spread.
    assert abs(every.mean()) < 0.5 and 0.5 < every.std() < 2.0
    np.testing.assert_allclose(every.mean(dim=(0, 2, 3)), meta["channel_mean"], atol=1e-5)
    assert torch.equal(labels[:n_train], labels[n_train:])  # the mirror images keep their labels

    release = paths.diffusion("plain-0")
    config = json.loads((release / "config.json").read_text())
    assert config["model"]["name"] == "T/2" and config["variant"] == "plain"
    assert config["seed"] == 0 and config["tokenizer"] == "data/checkpoints/tokenizer-plain-0"
    metrics = json.loads(paths.stage_metrics("train_diffusion@plain-0").read_text())
    assert metrics["train/steps"] == 4 and np.isfinite(metrics["train/final_loss"])
    curve = ConvergenceCurve.model_validate_json(paths.convergence("plain-0").read_text())
    assert curve.variant == "plain" and curve.seed == 0
    assert curve.feature_net == "effnet_lite2" and curve.compute_unit == "cpu_hours"
    assert [p.step for p in curve.points] == [4]  # sample_every 4 and the last step
    assert curve.points[0].fd > 0 and curve.points[0].compute_hours > 0

    client = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ldm-poc")
    (run,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'train_diffusion@plain-0'"
    )
    assert run.data.params["variant.name"] == "plain" and run.data.params["cell.seed"] == "0"
    assert any("samples" in a.path for a in client.list_artifacts(run.info.run_id, "images"))
    assert client.get_metric_history(run.info.run_id, "train/loss")
    (point,) = client.get_metric_history(run.info.run_id, "curve/fd_effnet_lite2")
    assert point.step == 4 and point.value == curve.points[0].fd

    monkeypatch.chdir(trained)  # `ldm sample` reads the project and writes only under tmp_path
    grid = tmp_path / "grid.png"
    invoke("sample", str(grid), "--variant", "plain", "-n", "6")
    assert Image.open(grid).size == (6 * 16, 16)
    folder = tmp_path / "one-class"
    invoke("sample", str(folder), "--variant", "plain", "-n", "3", "--class", "brick")
    assert sorted(p.name for p in folder.iterdir()) == [f"sample-0000{i}.png" for i in range(3)]
    again = tmp_path / "again.png"
    invoke("sample", str(again), "--variant", "plain", "--seed", "0", "-n", "6")
    assert Image.open(again).tobytes() == Image.open(grid).tobytes()  # deterministic under seed
    refused = runner.invoke(app, ["sample", str(again), "--variant", "plain", "--seed", "1"])
    assert refused.exit_code == 2 and "trial.seeds" in refused.stderr


def test_per_variant_stages_name_what_is_missing(tokenized: Path) -> None:
    result = runner.invoke(app, ["train-diffusion", "--variant", "plain"])
    assert result.exit_code == 1 and "ldm encode --variant plain --seed 0" in result.stderr
    result = runner.invoke(app, ["encode", "--variant", "aligned"])
    assert result.exit_code == 1
    assert "ldm train-tokenizer --variant aligned --seed 0" in result.stderr
    result = runner.invoke(app, ["sample", "x.png", "--variant", "plain"])
    assert result.exit_code == 1 and "ldm train-diffusion" in result.stderr
