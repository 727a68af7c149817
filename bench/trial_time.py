"""How long the default trial takes, stage by stage, as a new user meets it.

Copies the project's tracked files into a fresh folder (a new `git init`, an empty `data/`, the
bundled sample written by `ldm run` itself), runs `ldm run` with this interpreter's venv, then
runs it again with nothing changed. Prints one table: each stage's own wall time (what its
MLflow run recorded as `cost/wall_seconds`), the orchestration overhead (the trial's wall time
minus the stages' own: process starts, DVC, Prefect, MLflow), and the re-run.

    .venv/bin/python bench/trial_time.py [--keep DIR] [--set section.key=value ...]

Wall times are absolute seconds on this machine: run it with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fresh_copy(target: Path) -> None:
    """The tracked files of this checkout, in a new git repository with DVC initialised."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost")
    env |= {"GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"]):
        subprocess.run(command, cwd=target, check=True, env=env, capture_output=True)


def timed_run(project: Path, args: list[str]) -> tuple[float, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PREFECT_API_URL", None)  # the project's own local Prefect server, as a user has
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "ldm", "run", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"ldm run failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def stage_seconds(project: Path) -> dict[str, float]:
    """Each stage's own wall time, from its MLflow run under the last trial."""
    from mlflow import MlflowClient

    trial = json.loads((project / ".ldm" / "last-trial.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    children = client.search_runs(
        [trial["mlflow_experiment_id"]],
        f"tags.mlflow.parentRunId = '{trial['mlflow_parent_run_id']}'",
        order_by=["attributes.start_time ASC"],
    )
    return {run.info.run_name: run.data.metrics["cost/wall_seconds"] for run in children}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ldm-trial-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fresh_copy(folder)
        extra = [a for o in args.overrides for a in ("--set", o)]
        total, _ = timed_run(folder, extra)
        own = stage_seconds(folder)
        rerun, rerun_output = timed_run(folder, [])
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    width = max(len(s) for s in own) + 2
    print(f"{'stage':<{width}} {'wall s':>8}")
    for stage, seconds in own.items():
        print(f"{stage:<{width}} {seconds:8.1f}")
    print(f"{'stages, sum':<{width}} {sum(own.values()):8.1f}")
    print(f"{'orchestration':<{width}} {total - sum(own.values()):8.1f}")
    print(f"{'trial (ldm run)':<{width}} {total:8.1f}")
    print(f"{'re-run, no change':<{width}} {rerun:8.1f}")
    if "Nothing changed" not in rerun_output:
        print("note: the re-run ran stages:\n" + rerun_output)


if __name__ == "__main__":
    main()
