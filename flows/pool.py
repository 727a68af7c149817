"""The trial's half of a stage on a GPU host (`orchestration.gpu_pool`; flows/remote.py runs it).

The trial pushes the stage's inputs to the DVC remote, starts the deployment on the pool as a
subflow, prints the stage's lines as the worker sends them to Prefect, then takes back what a
local run would have left in this checkout: the worker's `dvc.lock` (it started from this one, so
only the stage's entry differs), the stage's outputs (`dvc pull`) and its `cache: false` metrics.
`dvc status` then confirms that DVC sees the stage as up to date here, as after a local run.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import yaml

from flows.remote import REMOTE_FLOW, failure, handover_file, md5, stage_files, write_atomic
from flows.stage_run import STAGE_LOG, StageFailed, dvc, dvc_step, say
from ldm import tracking

POLL_S = 2.0


def check_setup(root: Path, stage: str, pool: str) -> None:
    """Fail before any stage runs when `stage` could not run on `pool` and come back."""
    from prefect.settings import PREFECT_API_URL

    missing = []
    if not PREFECT_API_URL.value():
        missing.append(
            "PREFECT_API_URL set to the team's Prefect server (http://HOST:4200/api): the "
            "pool's worker cannot reach a trial's temporary one"
        )
    if not tracking.tracking_uri(root).startswith(("http://", "https://")):
        missing.append(
            "MLFLOW_TRACKING_URI set to the team's MLflow server: the GPU host cannot log into "
            "this project's own store"
        )
    remote = dvc(root, "remote", "default")
    if remote.returncode != 0 or not remote.stdout.strip():
        missing.append(
            "a default DVC remote both hosts reach: `dvc remote add -d NAME URL`, "
            "committed in .dvc/config"
        )
    if missing:
        raise StageFailed(
            stage, 1, f"it runs on the work pool {pool!r}, which needs " + "; and ".join(missing)
        )


def run_on_pool(root: Path, stage: str, pool: str, parent_run_id: str, timeout_s: float) -> bool:
    """Run `stage` on the work pool `pool`, as `dvc repro --single-item` would here: True if
    it ran, False if DVC found it up to date."""
    if not changes(root, stage):
        return False
    files = stage_files(root, stage)
    if files.inputs:
        say(f"  pushing {', '.join(files.inputs)} to the DVC remote")
        dvc_step(root, stage, "push", *files.inputs, timeout_s=timeout_s)
    lock = root / "dvc.lock"
    parameters = {
        "stage": stage,
        "parent_run_id": parent_run_id,
        "params_yaml": (root / "params.yaml").read_text(),
        "dvc_lock": lock.read_text() if lock.is_file() else None,
        "sources": {path: md5(root / path) for path in files.sources},
        "timeout_s": timeout_s,
    }
    follow(stage, pool, parameters)
    handover = json.loads(tracking.read_text(root, parent_run_id, handover_file(stage)))
    take_lock(root, stage, handover["dvc_lock"])
    for path, text in handover["files"].items():
        write_atomic(root / path, text)
    dvc_step(root, stage, "pull", "--force", stage, timeout_s=timeout_s)
    left = changes(root, stage)
    if left:
        raise StageFailed(
            stage,
            1,
            f"ran on {handover['host']}, but DVC here still sees it as changed, so the two "
            f"checkouts differ: {json.dumps(left)}",
        )
    return handover["ran"]


def changes(root: Path, stage: str) -> dict:
    """What `dvc status` finds changed in `stage` (nothing when it is up to date)."""
    status = dvc(root, "status", "--json", stage)
    if status.returncode != 0:
        return {"dvc status": status.stderr.strip()}
    return json.loads(status.stdout or "{}")


def take_lock(root: Path, stage: str, theirs: str) -> None:
    """Adopt the worker's dvc.lock, whose other entries must be this checkout's."""
    lock = root / "dvc.lock"
    mine = yaml.safe_load(lock.read_text()) if lock.is_file() else None

    def others(tree: dict | None) -> dict:
        entries = (tree or {}).get("stages") or {}
        return {name: entry for name, entry in entries.items() if name != stage}

    if others(mine) != others(yaml.safe_load(theirs)):
        raise StageFailed(stage, None, "dvc.lock changed here while the stage ran on the pool")
    write_atomic(lock, theirs)


def follow(stage: str, pool: str, parameters: dict) -> None:
    """Start the deployment on `pool` as a subflow and wait for it, printing its stage lines;
    raise StageFailed as a local stage would when it fails."""
    from prefect import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelling

    name = f"{REMOTE_FLOW}/{pool}"
    try:
        flow_run = run_deployment(name, parameters=parameters, timeout=0, as_subflow=True)
    except ObjectNotFound:
        raise StageFailed(
            stage,
            1,
            f"the Prefect server has no deployment {name!r}: run `ldm deploy --pool {pool}` "
            "in the GPU host's checkout",
        ) from None
    say(f"  sent to the work pool {pool!r}: flow run {flow_run.name!r}")
    with get_client(sync_client=True) as client:
        online = WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
        if not client.read_workers_for_work_pool(pool, worker_filter=online):
            say(
                f"  no worker serves {pool!r} now: the stage starts when one does "
                f"(`prefect worker start --pool {pool} --limit 1` on the GPU host)"
            )
        lines = LogTail(client, flow_run.id)
        try:
            while not (state := client.read_flow_run(flow_run.id).state).is_final():
                lines.show()
                time.sleep(POLL_S)
        except BaseException:  # Ctrl+C or a cancelled trial: the worker stops the stage too
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
            raise
        lines.drain()
    if state.is_completed():
        return
    message = state.message or ""
    # Anything but the stage's own failure (a crash, a cancel) may pass: it is retried.
    raise failure(stage, message) or StageFailed(
        stage, None, f"its flow run on {pool!r} ended {state.name}: {message}"
    )


class LogTail:
    """Prints the stage lines of a flow run as they reach the Prefect server."""

    def __init__(self, client, flow_run_id) -> None:  # noqa: ANN001 (Prefect's types)
        self.client, self.flow_run_id = client, flow_run_id
        self.seen: set = set()
        self.since = None  # timestamp of the newest line shown

    def show(self) -> int:
        from prefect.client.schemas.filters import (
            LogFilter,
            LogFilterFlowRunId,
            LogFilterTimestamp,
        )

        # Lines are sent in batches from more than one process, so one that arrives late may
        # be older than the newest shown: look back a minute and skip the ones already shown.
        after = self.since - timedelta(minutes=1) if self.since else None
        query = LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[self.flow_run_id]),
            timestamp=LogFilterTimestamp(after_=after),
        )
        shown, offset = 0, 0
        while batch := self.client.read_logs(query, limit=200, offset=offset):
            offset += len(batch)
            for log in batch:
                if log.id in self.seen:
                    continue
                self.seen.add(log.id)
                self.since = max(self.since or log.timestamp, log.timestamp)
                if log.name.endswith("." + STAGE_LOG):
                    print(f"  {log.message}", flush=True)
                    shown += 1
        return shown

    def drain(self, quiet_polls: int = 2, limit_s: float = 20.0) -> None:
        """The run's last lines reach the server after its final state: wait for them."""
        deadline, quiet = time.monotonic() + limit_s, 0
        while quiet < quiet_polls and time.monotonic() < deadline:
            time.sleep(POLL_S)
            quiet = 0 if self.show() else quiet + 1
