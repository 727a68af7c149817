"""Faults a trial must survive, each as a user meets it: through `ldm run` in a real process."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from ldm.stages.trial_lock import trial_lock
from tests.conftest import ldm_env, ldm_run, one_variant

pytestmark = pytest.mark.slow


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(f.read_bytes())
    return h.hexdigest()


def test_a_failing_stage_shows_its_cause_everywhere_and_stops_the_trial(
    project: Path, prefect_server
) -> None:
    one_variant(project, **{"validate.min_images": 10_000})
    result = ldm_run(project)
    assert result.returncode == 1  # the data needs a fix
    assert "data-quality checks failed" in result.stdout  # the stage's own words, as they came
    assert "! validate: failed (exit code 1)" in result.stdout
    assert "(attempt 2)" not in result.stdout  # a data error is final: not retried
    assert "> prepare" not in result.stdout  # later stages never started
    assert "Traceback" not in result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ldm-poc").experiment_id])
    # One stage run, validate's: no retry, no later stage.
    (stage,) = [r for r in runs if r.data.tags.get("ldm.kind") == "stage"]
    assert stage.info.run_name == "validate"
    assert stage.info.status == "FAILED"
    assert "data-quality checks failed" in stage.data.tags["ldm.error"]
    (trial,) = [r for r in runs if r.data.tags.get("ldm.kind") == "trial"]
    assert stage.data.tags["mlflow.parentRunId"] == trial.info.run_id
    assert trial.info.status == "FAILED"
    assert trial.data.tags["ldm.failed_stage"] == "validate"
    assert "validate" in trial.data.tags["ldm.error"]


def test_an_unreachable_mlflow_server_fails_in_seconds_naming_it(
    project: Path, prefect_server
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    result = ldm_run(project, env=ldm_env(MLFLOW_TRACKING_URI=uri), timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert uri in line and "does not answer" in line
    assert not (project / "data/validated").exists()  # no stage ran


def test_a_second_trial_refuses_at_once_and_touches_nothing(project: Path, prefect_server) -> None:
    one_variant(project)
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    before = digest(project / "dvc.lock", project / "params.yaml", project / "data")
    with trial_lock(project, "ldm run"):
        started = time.monotonic()
        result = ldm_run(project, "--set", "tokenizer.steps=5", timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "another trial is running" in result.stderr and f"pid {os.getpid()}" in result.stderr
    after = digest(project / "dvc.lock", project / "params.yaml", project / "data")
    assert after == before and not (project / "mlflow.db").exists()


def test_a_killed_trial_resumes_from_its_last_checkpoint_and_retries_a_transient_failure(
    project: Path, prefect_server
) -> None:
    # Two faults in one trial's life, apart: a kill in train_diffusion, after which the next
    # `ldm run` resumes it; then, in that run, a transient failure in evaluate, which is retried.
    one_variant(
        project,
        **{
            "diffusion.steps": 400,
            "diffusion.checkpoint_every": 20,
            "diffusion.sample_every": 400,
            "orchestration.retry_delay_seconds": 0,
        },
    )
    # evaluate's command fails once with exit 3 (an unexpected error), then works.
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    evaluate = dvc["stages"]["evaluate"]["do"]
    evaluate["cmd"] = "test -f .failed-once || { touch .failed-once; exit 3; }; " + evaluate["cmd"]
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    work = project / "data/.work/train_diffusion@plain"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ldm", "run"],
        cwd=project,
        env=ldm_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not (work / "step-00000040").is_dir():  # two checkpoints in: kill it
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole trial, as a crash would
        proc.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in work.glob("step-*"))
    assert not (project / ".failed-once").exists()  # the killed trial never reached evaluate

    result = ldm_run(project)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # The kill: finished stages are skipped, train_diffusion resumes from its last checkpoint,
    # and the killed trial's MLflow runs are closed as KILLED.
    assert f"resuming at step {killed_at}" in result.stdout, result.stdout
    for stage in ("validate", "prepare", "train_tokenizer@plain", "encode@plain"):
        assert any(line.split() == [stage, "skipped"] for line in lines), stage
    assert killed_at >= 40  # at most one checkpoint interval (20 steps) was lost
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ldm-poc").experiment_id])
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert {r.data.tags.get("ldm.kind") for r in killed} == {"trial", "stage"}
    # The transient failure: shown with its exit code, retried, and the trial completes.
    assert "! evaluate@plain: failed (exit code 3)" in result.stdout
    assert "> evaluate@plain (attempt 2)" in result.stdout
    assert (project / "data/metrics/evaluate@plain.json").is_file()
    assert any(line.split() == ["report", "ran"] for line in lines)
