"""A trial whose train_diffusion runs on a work pool, set up as README.md's "Scale out: a GPU
host" says: a Prefect server, an MLflow server, a DVC remote, and a worker serving the pool from
its own checkout (a clone). Its outputs, dvc.lock and MLflow runs must be a local trial's."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from ldm.config import load
from ldm.stages import stage_names
from tests.conftest import REPO, ldm_run, one_variant

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
POOL = "gpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Servers and workers, each in its own process group, all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, []

    def start(self, name: str, command: list[str], cwd: Path, env: dict[str, str]):
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=out, start_new_session=True
            )
        self.started.append(proc)
        return proc

    def wait_for(self, name: str, proc: subprocess.Popen, url: str, limit_s: float = 180) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{name} exited:\n{self.tail(name)}"
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return
            except OSError:
                time.sleep(1)
        pytest.fail(f"{name} did not answer at {url} in {limit_s:.0f} s:\n{self.tail(name)}")

    def tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Processes(logs)
    try:
        yield running
    finally:
        running.stop_all()


def host_env(home: Path, **extra: str) -> dict[str, str]:
    """A machine's environment: its own Prefect home, the tools next to this interpreter."""
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(home), PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "LDM_PARENT_RUN_ID"):
        env.pop(name, None)
    return env | extra


@pytest.fixture
def team(tmp_path: Path, processes: Processes) -> dict[str, str]:
    """The team's Prefect and MLflow servers, started as the README says."""
    prefect_port, mlflow_port = free_port(), free_port()
    server = tmp_path / "server"
    prefect = processes.start(
        "prefect-server",
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        cwd=tmp_path,
        env=host_env(server / "prefect", PREFECT_SERVER_ANALYTICS_ENABLED="false"),
    )
    mlflow = processes.start(
        "mlflow-server",
        [
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{server / 'mlflow.db'}",
            "--artifacts-destination",
            str(server / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=host_env(server / "mlflow-home", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    urls = {
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
    }
    processes.wait_for("prefect-server", prefect, urls["PREFECT_API_URL"] + "/health")
    processes.wait_for("mlflow-server", mlflow, urls["MLFLOW_TRACKING_URI"] + "/health")
    return urls


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, timeout=60)


def dvc_lock(root: Path) -> dict:
    """dvc.lock without the hashes of metrics files: they hold each run's timings."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for entry in stages.values():
        for item in entry.get("deps", []) + entry.get("outs", []):
            if item["path"].startswith("data/metrics"):
                item.update(md5="(timings)", size=0, nfiles=0)
    return stages


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def nested_runs(tracking_uri: str, parent_id: str) -> dict[str, dict]:
    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return {
        run.info.run_name: {
            "status": run.info.status,
            "stage": run.data.tags.get("ldm.stage"),
            "kind": run.data.tags.get("ldm.kind"),
            "metrics": sorted(k for k in run.data.metrics if not k.startswith("system/")),
        }
        for run in children
    }


def parent_id_of(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("MLflow: "))
    return line.split()[1].rsplit("/", 1)[1]


def test_train_diffusion_on_a_work_pool_leaves_what_a_local_trial_leaves(
    project: Path, tmp_path: Path, team: dict[str, str], processes: Processes
) -> None:
    one_variant(project)
    # The team's repository: the project with its flows and a DVC remote both hosts reach.
    shutil.copytree(REPO / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")],
        cwd=project,
        check=True,
        capture_output=True,
    )
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "flows and the shared DVC remote")
    local, gpu_host = tmp_path / "local", tmp_path / "gpu-host"
    git(tmp_path, "clone", "-q", str(project), str(gpu_host))

    # The GPU host: register the deployment from its checkout, then serve the pool.
    worker_env = host_env(tmp_path / "gpu-host-home", **team, PREFECT_WORKER_QUERY_SECONDS="2")
    deployed = subprocess.run(
        [sys.executable, "-m", "ldm", "deploy", "--pool", POOL],
        cwd=gpu_host,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    processes.start(
        "worker",
        ["prefect", "worker", "start", "--pool", POOL, "--limit", "1"],
        cwd=gpu_host,
        env=worker_env,
    )

    laptop = host_env(tmp_path / "laptop-home", **team)
    remote = ldm_run(project, "--set", f"orchestration.gpu_pool={POOL}", env=laptop, timeout=900)
    out = remote.stdout
    assert remote.returncode == 0, out + remote.stderr + processes.tail("worker")
    lines = out.splitlines()
    assert f"  sent to the work pool '{POOL}'" in out
    # The worker's lines reach this terminal as a local stage's would.
    assert any(line.strip().startswith("train_diffusion@plain-0  4/4") for line in lines), out
    assert any(line.split() == ["train_diffusion@plain-0", "ran"] for line in lines)
    assert "Traceback" not in out + remote.stderr

    # What a local trial leaves: the same stage run here as the trial runs a local one
    # (`dvc repro --single-item`, nested under a trial's run), in a copy of this checkout
    # from before it ran.
    uri = team["MLFLOW_TRACKING_URI"]
    shutil.copytree(project, local)
    lock = yaml.safe_load((local / "dvc.lock").read_text())
    del lock["stages"]["train_diffusion@plain-0"]
    (local / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    shutil.rmtree(local / "data/checkpoints/diffusion-plain-0")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ldm-poc").experiment_id
    local_parent = client.create_run(experiment, run_name="local trial").info.run_id
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--single-item", "train_diffusion@plain-0"],
        cwd=local,
        env=laptop | {"LDM_PARENT_RUN_ID": local_parent},
        check=True,
        capture_output=True,
        timeout=600,
    )

    # The same dvc.lock entries and outputs as the local trial, and DVC finds nothing to do.
    assert dvc_lock(project) == dvc_lock(local)
    assert digest(project / "data/checkpoints/diffusion-plain-0") == digest(
        local / "data/checkpoints/diffusion-plain-0"
    )
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout) == {}
    # The stage's metrics file came back: evaluate and the report counted its cost.
    metrics_file = "data/metrics/train_diffusion@plain-0.json"
    assert (project / metrics_file).read_text() == (gpu_host / metrics_file).read_text()
    cost = json.loads((project / metrics_file).read_text())
    evaluated = json.loads((project / "data/metrics/evaluate@plain-0.json").read_text())
    counted = evaluated["cost"]["stages"]["train_diffusion@plain-0"]
    assert counted["wall_seconds"] == cost["cost/wall_seconds"]
    assert counted["device_kind"] == cost["cost/device_kind"]

    # The same MLflow runs, each nested under its trial's run.
    remote_runs = nested_runs(uri, parent_id_of(out))
    assert set(remote_runs) == set(stage_names(load(project / "params.yaml")))
    assert all(run["status"] == "FINISHED" for run in remote_runs.values())
    assert nested_runs(uri, local_parent) == {
        "train_diffusion@plain-0": remote_runs["train_diffusion@plain-0"]
    }

    # A failure on the worker stops the trial as a local one would: no retry of a setup fault,
    # its exit code, its cause in this terminal.
    failed = ldm_run(project, "--set", "diffusion.micro_batch_size=3", env=laptop, timeout=600)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "must be a multiple of world_size" in failed.stdout
    assert "! train_diffusion@plain-0: failed (exit code 1)" in failed.stdout
    assert "(attempt 2)" not in failed.stdout and "> evaluate@plain-0" not in failed.stdout


def test_a_trial_sent_to_a_pool_without_servers_or_remote_stops_at_once_naming_them(
    project: Path, prefect_server
) -> None:
    one_variant(project)
    result = ldm_run(project, "--set", f"orchestration.gpu_pool={POOL}", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"train_diffusion@plain-0: it runs on the work pool '{POOL}'" in result.stderr
    assert "MLFLOW_TRACKING_URI" in result.stderr and "dvc remote add -d" in result.stderr
    assert "PREFECT_API_URL" not in result.stderr  # this one is set: the test server
    assert "> validate" not in result.stdout  # no stage ran
