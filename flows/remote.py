"""A stage on a GPU host: the worker's half of `orchestration.gpu_pool`, and `ldm deploy`.

`ldm deploy`, run on the GPU host in its checkout of the project, registers `remote_stage` as the
deployment `ldm-remote-stage/<pool>` with that checkout folder as its source. The worker serving
the pool then runs every remote stage in that checkout: with the `ldm` installed from it
(`pip install -e .`), its DVC cache and its resume points under `data/.work`. (A git URL as the
source would clone afresh for each run: an empty DVC cache, no resume, and code other than the
`ldm` the stage command runs.)

A run takes the trial's `params.yaml` and `dvc.lock`, so DVC decides here exactly as it would in
the trial's checkout; pulls the stage's inputs from the DVC remote; runs `dvc repro --single-item`
through flows/stage_run.py's `repro`, so its lines read as a local stage's; pushes the stage's
outputs; and hands back what DVC does not push: the updated `dvc.lock` and the stage's
`cache: false` metrics. They travel as an artifact of the trial's MLflow run: the tracking server
is shared already, while Prefect's return value would need result storage both hosts can read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from prefect.states import Failed, State

from flows.stage_run import StageFailed, dvc_step, note, repro, stage_env
from ldm import tracking
from ldm.errors import LdmError
from ldm.stages.trial_lock import trial_lock

REMOTE_FLOW = "ldm-remote-stage"
HANDOVER = "remote-stages"  # folder of the trial's MLflow run that receives each stage's result


@dataclass(frozen=True)
class StageFiles:
    inputs: list[str]  # deps another stage writes: they travel through the DVC remote
    sources: list[str]  # dvc.yaml and the other file deps (code): both checkouts must agree
    uncached: list[str]  # `cache: false` outputs (metrics), which DVC does not push


def stage_files(root: Path, stage: str) -> StageFiles:
    """What a stage reads and writes, as DVC resolves it from dvc.yaml and params.yaml."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        (target,) = repo.stage.collect(stage)
        written = {str(out.fs_path) for other in repo.index.stages for out in other.outs}
        files = [dep for dep in target.deps if not isinstance(dep, ParamsDependency)]
        inputs = [dep.def_path for dep in files if str(dep.fs_path) in written]
        sources = [
            dep.def_path
            for dep in files
            if str(dep.fs_path) not in written and Path(dep.fs_path).is_file()
        ]
        uncached = [out.def_path for out in target.outs if not out.use_cache]
    return StageFiles(inputs, ["dvc.yaml", *sources], uncached)


def md5(path: Path) -> str | None:
    """The hash DVC records for a file (plain md5 since DVC 3); None when there is none."""
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@flow(name=REMOTE_FLOW)
def remote_stage(
    checkout: str,
    stage: str,
    parent_run_id: str,
    params_yaml: str,
    dvc_lock: str | None,
    sources: dict[str, str | None],
    timeout_s: float,
) -> dict | State:
    """One stage of a trial, run in this host's checkout from the trial's params and dvc.lock."""
    root, host = Path(checkout), socket.gethostname()
    try:
        # One stage at a time in this checkout (the worker's --limit 1 says the same).
        with trial_lock(root, f"{stage} of a trial, sent to this GPU host"):
            tracking.require_run(root, parent_run_id)
            take_trial(root, params_yaml, dvc_lock, sources)
            ran = run_here(root, host, stage, parent_run_id, timeout_s)
        return {"host": host, "ran": ran}
    except LdmError as err:  # a setup fault on this host: a retry would meet it again
        failed = StageFailed(stage, 1, f"on {host}: {err}")
    except StageFailed as err:
        failed = err
    # The trial reads this failure from the run's state message: the exit code goes with it.
    return Failed(message=f"exit code {failed.exit_code}: {failed}")


def failure(stage: str, message: str) -> StageFailed | None:
    """The StageFailed that `remote_stage` ended with, read from its state message."""
    found = re.match(rf"exit code (-?\d+|None): {re.escape(stage)}: (.*)", message, re.DOTALL)
    if found is None:
        return None
    code = None if found[1] == "None" else int(found[1])
    return StageFailed(stage, code, found[2])


def take_trial(
    root: Path, params_yaml: str, dvc_lock: str | None, sources: dict[str, str | None]
) -> None:
    """Put the trial's params.yaml and dvc.lock in this checkout, whose code must be the trial's."""
    differ = [path for path, digest in sources.items() if md5(root / path) != digest]
    if differ:
        raise LdmError(
            f"the checkout {root} differs from the trial's in {', '.join(differ)}: "
            "bring both to the same commit (`git pull` here), then run the trial again"
        )
    write_atomic(root / "params.yaml", params_yaml)
    lock = root / "dvc.lock"
    if dvc_lock is None:
        lock.unlink(missing_ok=True)
    else:
        write_atomic(lock, dvc_lock)


def run_here(root: Path, host: str, stage: str, parent_run_id: str, timeout_s: float) -> bool:
    """Pull the stage's inputs, run it, push its outputs, and hand the rest back to the trial
    through its MLflow run: True if it ran."""
    files = stage_files(root, stage)
    if files.inputs:
        note(f"on {host}: pulling {', '.join(files.inputs)} from the DVC remote")
        dvc_step(root, stage, "pull", "--force", *files.inputs, timeout_s=timeout_s)
    ran = repro(root, stage, stage_env(parent_run_id), timeout_s)
    dvc_step(root, stage, "push", stage, timeout_s=timeout_s)
    note(f"on {host}: pushed its outputs to the DVC remote")
    handover = {
        "host": host,
        "ran": ran,
        "dvc_lock": (root / "dvc.lock").read_text(),
        "files": {path: (root / path).read_text() for path in files.uncached},
    }
    tracking.log_text(root, parent_run_id, json.dumps(handover), handover_file(stage))
    return ran


def handover_file(stage: str) -> str:
    return f"{HANDOVER}/{stage}.json"


def deploy(root: Path, pool: str) -> str:
    """Register `remote_stage` from this checkout on `pool` (a process pool, created if missing)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=template)
            )
            print(f"created the work pool {pool!r} (type process)")
    source = flow.from_source(source=str(root), entrypoint="flows/remote.py:remote_stage")
    source.deploy(
        name=pool,
        work_pool_name=pool,
        parameters={"checkout": str(root)},
        print_next_steps=False,
    )
    return f"{REMOTE_FLOW}/{pool}"


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.remote deploy ROOT --pool NAME`: what `ldm deploy` starts."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.remote")
    commands = parser.add_subparsers(dest="command", required=True)
    deploying = commands.add_parser("deploy", help=deploy.__doc__)
    deploying.add_argument("root", type=Path, help="this host's checkout of the project")
    deploying.add_argument("--pool", required=True, help="the Prefect work pool to serve")
    args = parser.parse_args(argv)
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print(
            "set PREFECT_API_URL to the team's Prefect server (http://HOST:4200/api): the "
            "deployment and the worker that runs it live there",
            file=sys.stderr,
        )
        return 1
    name = deploy(args.root.resolve(), args.pool)
    print(
        f"deployment {name!r} runs stages in {args.root.resolve()}; serve its pool here with "
        f"`prefect worker start --pool {args.pool} --limit 1`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
