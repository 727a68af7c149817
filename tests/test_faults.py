"""Faults a trial must survive, each as a user meets it: through `ldm run` in a real process.

Stopped and crashed trials, and the retry of a transient failure: tests/test_interrupt.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest
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
