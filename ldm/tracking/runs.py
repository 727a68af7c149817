"""MLflow runs: the trial's parent run, one run per stage, and the store they live in.

One trial (`ldm run`) is one parent run; every stage is a run of its own, nested under the trial's
run when the stage process finds the parent's id in `LDM_PARENT_RUN_ID` (the flow sets it for the
`dvc repro` it starts), and top-level when a stage is run by hand. The default store is
`sqlite:///<project root>/mlflow.db`, absolute so that the CLI, DVC and Prefect (each with its own
working directory) all write the same database; `MLFLOW_TRACKING_URI` points elsewhere.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.errors import LdmError
from ldm.nested import flatten

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient

PARENT_RUN_ENV = "LDM_PARENT_RUN_ID"


class MlflowTracker:
    """Logs into one MLflow run through a client bound to one store: no global MLflow state."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.run_id = run_id
        self.experiment_id: str | None = None  # known for the runs this module creates
        self._client = client

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # the REST API takes at most 100 params a call
            self._client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path or path.name)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """A uint8 HxWx3 picture in a step-indexed series (the UI shows a step slider)."""
        self._client.log_image(self.run_id, image, key=key, step=step)


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root.resolve() / 'mlflow.db'}"


def remote_ui(root: Path) -> str | None:
    """The tracking server's address when the store is a server (it serves its own UI)."""
    uri = tracking_uri(root)
    return uri if uri.startswith(("http://", "https://")) else None


def store_client(root: Path) -> MlflowClient:
    """A client on the project's store; the registry lives in the same database."""
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI", uri))


def _client_and_experiment(root: Path, name: str) -> tuple[MlflowClient, str]:
    """A client on the project's store and the experiment's id (created on first use)."""
    from mlflow.exceptions import MlflowException

    client = store_client(root)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return client, found.experiment_id
    # MLflow's default artifact root is relative to the current directory; pin it to the project.
    sqlite = tracking_uri(root).startswith("sqlite:")
    location = (root.resolve() / "mlartifacts").as_uri() if sqlite else None
    try:
        # The kind tag opens the MLflow UI in its model-training view, not the GenAI one.
        tags = {"mlflow.experimentKind": "custom_model_development"}
        return client, client.create_experiment(name, artifact_location=location, tags=tags)
    except MlflowException:  # another process created it between our look-up and create
        return client, client.get_experiment_by_name(name).experiment_id


def provenance_tags(root: Path) -> dict[str, str]:
    """Git commit (and whether the tree was dirty) and the hash of dvc.lock when present."""
    tags = {"git_commit": "unknown", "git_dirty": "unknown"}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
            status = git("status", "--porcelain", "--untracked-files=no")
            tags["git_dirty"] = str(bool(status.stdout.strip())).lower()
    except (OSError, subprocess.TimeoutExpired):
        pass
    lock = root / "dvc.lock"
    if lock.is_file():
        tags["dvc_lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    return tags


@contextmanager
def _run(
    client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str]
) -> Iterator[MlflowTracker]:
    """A run that ends FINISHED, FAILED when the body raises, KILLED on Ctrl+C."""
    tags = {"mlflow.user": getpass.getuser(), "mlflow.source.name": f"ldm {name}", **tags}
    run = client.create_run(experiment_id, tags=tags, run_name=name)
    tracker = MlflowTracker(client, run.info.run_id)
    tracker.experiment_id = experiment_id
    try:
        yield tracker
    except KeyboardInterrupt:
        client.set_terminated(tracker.run_id, "KILLED")
        raise
    except BaseException as err:
        # The cause, readable in the run's tags without opening a log.
        client.set_tag(tracker.run_id, "ldm.error", (str(err) or type(err).__name__)[:4000])
        client.set_terminated(tracker.run_id, "FAILED")
        raise
    client.set_terminated(tracker.run_id, "FINISHED")


@contextmanager
def stage_run(root: Path, experiment: str, stage: str) -> Iterator[MlflowTracker]:
    """An MLflow run for one stage; nested under the trial's run when LDM_PARENT_RUN_ID is set."""
    client, experiment_id = _client_and_experiment(root, experiment)
    tags = {"ldm.stage": stage, "ldm.kind": "stage", **provenance_tags(root)}
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:  # a nested run lives in its parent's experiment
        experiment_id = client.get_run(parent).info.experiment_id
        tags["mlflow.parentRunId"] = parent
    with _run(client, experiment_id, stage, tags) as tracker:
        yield tracker


def attach(root: Path, run_id: str) -> MlflowTracker:
    """A tracker on a run another process opened (rank 0 of a DDP stage, into its launcher's)."""
    return MlflowTracker(store_client(root), run_id)


@contextmanager
def trial_run(
    root: Path,
    experiment: str,
    params_path: Path,
    name: str,
    tags: dict[str, str],
    overrides: list[str] | None = None,
) -> Iterator[MlflowTracker]:
    """The parent run of one `ldm run`, reproducible from its record: the exact params file
    and the `--set` overrides that produced it, and `dvc.lock` as it stood at the end.

    Every setting of the trial is also a param (`diffusion.steps`, `evaluate.features`, ...),
    so that two trials ticked in the MLflow UI show what differed between them.
    """
    from ldm import config

    client, experiment_id = _client_and_experiment(root, experiment)
    tags = {"ldm.kind": "trial", **provenance_tags(root), **tags}
    with _run(client, experiment_id, name, tags) as tracker:
        tracker.log_artifact(params_path)
        tracker.log_params(config.load(params_path).to_dict())
        if overrides:
            tracker.log_params({f"set.{k}": v for k, _, v in (o.partition("=") for o in overrides)})
        try:
            yield tracker
        finally:
            lock = root / "dvc.lock"
            if lock.is_file():  # the pipeline's state after the trial, to find it again with DVC
                tracker.log_artifact(lock)
                tracker.set_tags({"dvc_lock_sha256": provenance_tags(root)["dvc_lock_sha256"]})


def close_abandoned_runs(root: Path, experiment: str) -> list[str]:
    """Mark as KILLED the runs a killed trial left RUNNING; returns their names.

    Call it only while holding the project's trial lock: then no trial of this project is
    running, and a RUNNING trial run (or a stage run nested in one) was abandoned.
    """
    client, experiment_id = _client_and_experiment(root, experiment)
    running = client.search_runs(
        [experiment_id], "attributes.status = 'RUNNING' and tags.`ldm.kind` = 'trial'"
    )
    closed = []
    for trial in running:
        children = client.search_runs(
            [experiment_id],
            f"attributes.status = 'RUNNING' and tags.mlflow.parentRunId = '{trial.info.run_id}'",
        )
        for run in [*children, trial]:
            client.set_tag(run.info.run_id, "ldm.error", "abandoned: its trial was killed")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_name)
    return closed


def require_run(root: Path, run_id: str) -> None:
    """Fail unless this process's store holds `run_id`: a stage on another host must log into
    its trial's store, not one of its own."""
    from mlflow.exceptions import MlflowException

    check_store(root)
    uri = tracking_uri(root)
    try:
        store_client(root).get_run(run_id)
    except MlflowException:
        raise LdmError(
            f"the MLflow store {uri} holds no run {run_id}, the trial's: set MLFLOW_TRACKING_URI "
            "here to the tracking server the trial logs to"
        ) from None


def log_text(root: Path, run_id: str, text: str, artifact_file: str) -> None:
    """A text file among a run's artifacts."""
    store_client(root).log_text(run_id, text, artifact_file)


def read_text(root: Path, run_id: str, artifact_file: str) -> str:
    """A text file from a run's artifacts (written by `log_text`, maybe on another host)."""
    import tempfile

    client = store_client(root)
    with tempfile.TemporaryDirectory() as scratch:
        return Path(client.download_artifacts(run_id, artifact_file, scratch)).read_text()


def parent_tracker(root: Path) -> MlflowTracker | None:
    """The trial's run when this process runs inside `ldm run` (LDM_PARENT_RUN_ID), else None."""
    parent = os.environ.get(PARENT_RUN_ENV)
    return MlflowTracker(store_client(root), parent) if parent else None


def check_store(root: Path, timeout_s: float = 5.0) -> None:
    """Fail in seconds, in one line, when the tracking store cannot be reached or written.

    Without this a trial runs its first stages and fails minutes later inside MLflow's retries.
    """
    import urllib.error
    import urllib.request

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not os.access(folder, os.W_OK):
            raise LdmError(f"the MLflow store {uri} cannot be written: {folder} is read-only")
        return
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
                return
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LdmError(
                f"the MLflow server {uri} (MLFLOW_TRACKING_URI) does not answer ({reason}): "
                "start it, or unset MLFLOW_TRACKING_URI to use the project's own store"
            ) from None


def run_url(root: Path, experiment_id: str, run_id: str, ui_port: int = 5000) -> str:
    """Where a run opens in the MLflow UI: on the tracking server, or under `ldm ui`."""
    base = (remote_ui(root) or f"http://127.0.0.1:{ui_port}").rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
