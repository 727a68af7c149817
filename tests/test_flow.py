"""The trial as a Prefect flow through DVC, on a real (test) Prefect server and MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from prefect.states import Failed

from flows.stage_run import StageFailed
from flows.trial import is_transient, trial
from ldm.config import load
from ldm.stages import stage_names
from tests.conftest import ldm_run, one_variant

pytestmark = pytest.mark.slow


def runs_by_name(root: Path) -> dict[str, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ldm-poc")
    found: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id]):
        found.setdefault(run.info.run_name, []).append(run)
    return found


def test_trial_runs_each_stage_through_dvc_then_skips_them(project: Path, prefect_server) -> None:
    names = stage_names(load(project / "params.yaml"))
    first = trial(str(project))
    assert set(first["stages"].values()) == {"ran"}
    assert list(first["stages"]) == names
    parent_id = first["mlflow_parent_run_id"]

    runs = runs_by_name(project)
    for stage in names:
        (stage_run,) = runs[stage]
        assert stage_run.data.tags["mlflow.parentRunId"] == parent_id
        assert stage_run.info.status == "FINISHED"
    (parent,) = [run for name, found in runs.items() if name.startswith("trial ") for run in found]
    assert parent.info.run_id == parent_id
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.data.metrics["stages_ran"] == len(names)
    assert parent.data.tags["stage.prepare"] == "ran"

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(names)
    assert json.loads((project / "data/prepared/meta.json").read_text())["resolution"] == 16

    second = trial(str(project))
    assert set(second["stages"].values()) == {"skipped"}
    assert second["mlflow_parent_run_id"] != parent_id
    assert len(runs_by_name(project)["validate"]) == 1  # skipped stages log no new run

    # `dvc repro` in the same checkout agrees that nothing is left to do.
    repro = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "didn't change, skipping" in repro.stdout
    assert "Running stage" not in repro.stdout
    metrics = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "evaluate@aligned.json" in metrics and "fd_effnet_lite2" in metrics

    # A changed param reruns exactly the stage that reads it, and what depends on its output:
    # the aligned variant's branch reruns, the plain one is skipped.
    raw = yaml.safe_load((project / "params.yaml").read_text())
    # (a margin alone would not do: below it, the hinge's gradient does not depend on it)
    raw["variants"]["aligned"]["phases"] = [{"share": 1.0, "vf_weight": 0.3, "use_margins": True}]
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    third = trial(str(project))
    reran = [s for s, status in third["stages"].items() if status == "ran"]
    assert reran == [
        "train_tokenizer@aligned",
        "encode@aligned",
        "train_diffusion@aligned",
        "evaluate@aligned",
        "report",
    ]


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (StageFailed("validate", 1, "quality suite failed"), False),
        (StageFailed("validate", 2, "bad config"), False),
        (StageFailed("validate", 3, "unexpected error"), True),
        (StageFailed("train", -9, "killed"), True),
        (StageFailed("train", None, "timed out"), True),
        (OSError("database is locked"), True),
    ],
)
def test_only_transient_failures_are_retried(error: Exception, retry: bool) -> None:
    assert is_transient(None, None, Failed(data=error)) is retry


def test_ldm_run_shows_progress_ends_with_an_answer_and_skips_a_rerun(
    project: Path, prefect_server
) -> None:
    one_variant(project, **{"promotion.gates.staging.max_relative_fd": 1000.0})
    result = ldm_run(project, "--set", "prepare.shard_size=50")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "prepare.shard_size: 64 -> 50" in out
    assert "shard_size: 50" in (project / "params.yaml").read_text()
    lines = out.splitlines()
    assert any(line.split() == ["validate", "ran"] for line in lines)
    # The stages' own lines reach the terminal as they come, without DVC's git hints.
    assert any(line.strip().startswith("train_tokenizer@plain  4/4") for line in lines)
    assert "git add" not in out and "autostage" not in out and "Traceback" not in out
    # It ends with the answer: the table, the recommendation, the report and the run.
    assert "Trial answer" in out and "recommended: plain" in out
    assert "ldm promote 1 --to staging" in out
    assert f"Report: {project / 'data/reports/report.html'}" in out
    url = next(line.split()[1] for line in lines if line.startswith("MLflow: "))
    parent_id = url.rsplit("/", 1)[1]
    (validate_run,) = runs_by_name(project)["validate"]
    assert validate_run.data.tags["mlflow.parentRunId"] == parent_id
    parent = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}").get_run(parent_id)
    assert parent.data.params["set.prepare.shard_size"] == "50"  # reproducible from its record
    assert parent.data.metrics["cost/usd"] > 0 and parent.data.metrics["cost/plain/usd"] > 0

    again = ldm_run(project)
    assert again.returncode == 0
    assert "Nothing changed since the last trial: no stage ran." in again.stdout
    assert "Trial answer" in again.stdout
    assert not any(line.split()[-1:] == ["ran"] for line in again.stdout.splitlines())
    assert len([n for n in runs_by_name(project) if n.startswith("trial ")]) == 1  # no clutter
