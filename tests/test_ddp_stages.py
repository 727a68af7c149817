"""Stages with world_size > 1 relaunch themselves under torchrun: 2 gloo processes on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file
from typer.testing import CliRunner

from ldm.cli import app
from ldm.errors import LdmError
from ldm.paths import Paths
from ldm.stages import launch
from ldm.tokenizer.release import load_tokenizer
from tests.conftest import PREPARED, copy_outputs, set_params
from tests.stage_run import TinyTrial

runner = CliRunner()
RUN_NAME = "attributes.run_name = '{}'"
NO_PERCEPTUAL = "tokenizer.perceptual=none"


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + result.stderr


def runs_named(root: Path, name: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ldm-poc")
    return client.search_runs([experiment.experiment_id], RUN_NAME.format(name))


def released_weights(folder: Path, work: Path) -> dict[str, torch.Tensor]:
    """A release's weights; its work folder goes, so that the next run starts afresh."""
    shutil.rmtree(work)
    return load_file(folder / "model.safetensors")


@torch.no_grad()
def tokenizer_outputs(folder: Path) -> list[torch.Tensor]:
    """What a released tokenizer computes: latents of fixed images, and their decoding.

    Outputs, not weights: see tests/test_tokenizer_ddp.py for why.
    """
    model = load_tokenizer(folder)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = model.encode(x)  # normalised with the latent statistics rank 0 measured
    return [z, model.decode(z)]


def assert_close(ddp: dict[str, torch.Tensor], single: dict[str, torch.Tensor]) -> None:
    assert ddp.keys() == single.keys()
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture
def prepared(project: Path, tiny_prepared: TinyTrial) -> Path:
    """A git + DVC project holding what the tiny trial's validate, prepare and reference left
    (the same params: the same files), their MLflow runs included."""
    copy_outputs(tiny_prepared.root, project, PREPARED)
    return project


@pytest.mark.slow
def test_two_processes_through_torchrun_train_what_one_process_trains(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = Paths(prepared)
    stage = "train_tokenizer@plain-0"
    # One thread, as each rank has: with the perceptual loss a few Adam steps are sensitive to
    # the summation order (1 vs 2 threads alone move the outputs by ~4e-3).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        invoke("train-tokenizer", "--variant", "plain", "--set", NO_PERCEPTUAL)
    finally:
        torch.set_num_threads(threads)
    single = tokenizer_outputs(paths.tokenizer("plain-0"))
    shutil.rmtree(paths.work(stage))
    single_metrics = json.loads(paths.stage_metrics(stage).read_text())
    sets = ["--set", NO_PERCEPTUAL, "--set", "tokenizer.world_size=2"]
    invoke("train-tokenizer", "--variant", "plain", *sets)
    # Looser than the loop's test (1e-4): a few Adam steps of this wider model on 16 px images
    # move single outputs by ~2e-4 with the summation order.
    for ours, theirs in zip(tokenizer_outputs(paths.tokenizer("plain-0")), single, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    metrics = json.loads(paths.stage_metrics(stage).read_text())
    assert metrics["psnr"] == pytest.approx(single_metrics["psnr"], rel=1e-3)
    assert metrics["train/final_loss"] == pytest.approx(single_metrics["train/final_loss"], 1e-4)
    assert metrics["cost/device_kind"] == "cpu" and metrics["cost/device_count"] == 0
    assert metrics["cost/gpu_hours"] == 0 and "cost/energy_kwh" not in metrics
    # The ranks' CPU time counts (children of the launcher, which itself only waits).
    assert metrics["cost/cpu_hours"] > single_metrics["cost/cpu_hours"]
    assert (paths.work(stage) / "step-00000004").is_dir()  # rank 0 saved the last step
    latest = runs_named(prepared, stage)[0]  # newest first: one run for the 2-process job
    assert latest.info.status == "FINISHED"
    assert latest.data.tags["cost.device_kind"] == "cpu"
    assert latest.data.metrics["train/l1"] > 0  # rank 0's curve, in the launcher's run

    invoke("encode", "--variant", "plain")
    stage, batch = "train_diffusion@plain-0", "diffusion.micro_batch_size=4"
    invoke("train-diffusion", "--variant", "plain", "--set", batch)
    single = released_weights(paths.diffusion("plain-0"), paths.work(stage))
    sets = ["--set", batch, "--set", "diffusion.world_size=2"]
    invoke("train-diffusion", "--variant", "plain", *sets)
    assert_close(load_file(paths.diffusion("plain-0") / "model.safetensors"), single)  # the EMA
    assert len(runs_named(prepared, stage)) == 2  # one per command, none per rank


def test_a_rank_error_fails_the_command_with_its_message_and_code(prepared: Path) -> None:
    sets = ["--set", "tokenizer.world_size=2", "--set", "tokenizer.batch_size=7"]
    result = runner.invoke(app, ["train-tokenizer", "--variant", "plain", *sets])
    assert result.exit_code == 1
    assert "multiple of tokenizer.world_size" in result.stderr
    (run,) = runs_named(prepared, "train_tokenizer@plain-0")
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_dvc_repro_records_a_two_process_stage_like_any_other(prepared: Path) -> None:
    set_params(prepared / "params.yaml", {"tokenizer.world_size": 2})
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    repro = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--single-item", "train_tokenizer@plain-0"],
        cwd=prepared,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert repro.returncode == 0, repro.stdout + repro.stderr
    lock = yaml.safe_load((prepared / "dvc.lock").read_text())["stages"]
    assert lock["train_tokenizer@plain-0"]["cmd"] == "ldm train-tokenizer --variant plain --seed 0"
    assert lock["train_tokenizer@plain-0"]["params"]["params.yaml"]["tokenizer"]["world_size"] == 2
    (run,) = runs_named(prepared, "train_tokenizer@plain-0")
    assert run.info.status == "FINISHED"


def test_more_ranks_than_gpus_is_refused_before_any_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    section = {"world_size": 2, "device": "auto"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LdmError, match=r"diffusion.world_size is 2 but 1 GPU"):
        launch.check_devices("train_diffusion", lambda name: section)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    launch.check_devices("train_diffusion", lambda name: section)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    launch.check_devices("train_diffusion", lambda name: section)  # auto on a CPU: gloo ranks
    with pytest.raises(LdmError, match="0 GPU"):
        launch.check_devices("train_diffusion", lambda name: section | {"device": "cuda"})
