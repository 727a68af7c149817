"""What a stage leaves in MLflow, read back with MlflowClient."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from ldm import tracking
from ldm.cli import app
from ldm.config import load
from ldm.nested import flatten

runner = CliRunner()


def client_for(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def only_run(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name("ldm-poc")
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    return runs[0]


def test_stage_logs_params_metrics_tags_and_artifacts(project: Path) -> None:
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert runner.invoke(app, ["validate"]).exit_code == 0

    client = client_for(project)
    run = only_run(client, "validate")
    assert run.info.status == "FINISHED"
    assert run.data.params["validate.min_side"] == "32"
    assert run.data.params["data.raw_dir"] == "data/raw"
    assert run.data.metrics["n_files"] == 120
    assert run.data.metrics["n_rejected_duplicate"] == 0
    assert run.data.metrics["cost/wall_seconds"] > 0
    tags = run.data.tags
    assert tags["ldm.stage"] == "validate"
    assert len(tags["git_commit"]) == 40
    assert len(tags["dvc_lock_sha256"]) == 64
    assert "mlflow.parentRunId" not in tags  # run by hand: a top-level run
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"manifest.parquet", "rejected.csv", "gx_validation.json", "data_docs"} <= artifacts
    # The store and the artifacts live in the project, whatever the working directory was.
    experiment = client.get_experiment_by_name("ldm-poc")
    assert experiment.artifact_location == (project / "mlartifacts").as_uri()


def test_failed_stage_run_is_marked_failed(project: Path) -> None:
    result = runner.invoke(app, ["validate", "--set", "validate.min_images=10000"])
    assert result.exit_code == 1
    run = only_run(client_for(project), "validate")
    assert run.info.status == "FAILED"
    assert run.data.tags["ldm.outcome"] == "failed"
    assert run.data.metrics["quality_passed"] == 0


def test_stage_nests_under_the_trial_run(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tracking.trial_run(
        project, "ldm-poc", project / "params.yaml", "trial by hand", {"origin": "test"}
    ) as parent:
        monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.run_id)
        assert runner.invoke(app, ["validate"]).exit_code == 0
    client = client_for(project)
    child = only_run(client, "validate")
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    trial = client.get_run(parent.run_id)
    assert trial.data.tags["ldm.kind"] == "trial"
    assert trial.data.tags["origin"] == "test"
    assert trial.info.run_name == "trial by hand"
    assert "params.yaml" in {a.path for a in client.list_artifacts(parent.run_id)}
    # Every setting of the trial is a param: two trials compared in the UI show what differs.
    settings = flatten(load(project / "params.yaml").to_dict())
    assert trial.data.params == {key: str(value) for key, value in settings.items()}


def test_tracking_uri_is_absolute_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(Path("rel")) == f"sqlite:///{Path('rel').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking.tracking_uri(tmp_path) == "http://mlflow.internal:5000"


def test_flatten_gives_the_keys_set_accepts() -> None:
    assert flatten({"data": {"resolution": 32, "x": {"y": 1}}}) == {
        "data.resolution": 32,
        "data.x.y": 1,
    }
