"""The trial as a Prefect flow: one task per stage, in DAG order, each run through `dvc repro`.

Who owns what: DVC decides *what reruns* (a stage whose deps and params did not change is
skipped, and `dvc.lock` stays the provenance); Prefect decides *when and where*, retries a stage
after a transient failure, enforces its timeout and keeps the run history; MLflow records *what
happened*: this flow opens the trial's parent run and each stage process logs a nested run under
it (the parent id travels in LDM_PARENT_RUN_ID through `dvc repro` to `ldm <stage>`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import prefect.runtime
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from ldm import config, tracking
from ldm.stages import stage_names

# `ldm <stage>` exits 1 when the data or setup needs a fix and 2 on a bad config: retrying those
# cannot help. Anything else (an unexpected error, a killed process, a locked store) is retried.
FINAL_EXIT_CODES = (1, 2)


class StageFailed(RuntimeError):
    def __init__(self, stage: str, exit_code: int | None, detail: str) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage, self.exit_code = stage, exit_code


def is_transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's retry hook)
    """Retry unless the stage said its input is wrong: the same input would fail again."""
    error = state.data if isinstance(state.data, BaseException) else None
    return not (isinstance(error, StageFailed) and error.exit_code in FINAL_EXIT_CODES)


def stage_env(parent_run_id: str) -> dict[str, str]:
    """The stage's environment: this interpreter's scripts first on PATH, the parent run's id."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env[tracking.PARENT_RUN_ENV] = parent_run_id
    return env


def dvc(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True
    )


def is_up_to_date(root: Path, stage: str) -> bool:
    status = dvc(root, "status", "--json", stage)
    if status.returncode != 0:
        raise StageFailed(stage, None, f"`dvc status` failed:\n{status.stderr.strip()}")
    return json.loads(status.stdout or "{}") == {}


def repro(root: Path, stage: str, env: dict[str, str], timeout_s: float) -> None:
    """`dvc repro --single-item <stage>`, its output streamed to the Prefect log as it comes."""
    logger = get_run_logger()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            logger.info(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 15)  # the whole group: dvc, `ldm <stage>` and its workers
        proc.wait()
        raise StageFailed(stage, None, f"timed out after {timeout_s / 60:.0f} min") from None
    reader.join(timeout=10)
    if proc.returncode != 0:
        found = re.findall(r"exited with (-?\d+)", "\n".join(lines))
        exit_code = int(found[-1]) if found else None
        tail = "\n".join(lines[-15:])
        raise StageFailed(
            stage, exit_code, f"`dvc repro` failed (stage exit code {exit_code}):\n{tail}"
        )


def tag_key(stage: str) -> str:
    """MLflow tag keys allow no '@': `encode@plain` is recorded as `stage.encode/plain`."""
    return "stage." + stage.replace("@", "/")


@task(cache_policy=NO_CACHE, retry_condition_fn=is_transient)
def run_stage(root: str, stage: str, parent_run_id: str, timeout_s: float) -> str:
    """Run one stage through DVC unless it is up to date; returns "ran" or "skipped"."""
    project = Path(root)
    if is_up_to_date(project, stage):
        get_run_logger().info(f"{stage}: up to date, skipped")
        return "skipped"
    repro(project, stage, stage_env(parent_run_id), timeout_s)
    return "ran"


@flow(name="ldm-trial")
def trial(root: str) -> dict:
    """Every stage of the trial in DAG order. Returns the MLflow parent run id and what ran."""
    project = Path(root)
    params = project / "params.yaml"
    cfg = config.load(params)
    settings = cfg.orchestration
    started = time.perf_counter()
    # Name the MLflow run after the Prefect flow run, so either UI leads to the other.
    flow_run_name = prefect.runtime.flow_run.name
    links = {"prefect.flow_run_id": str(prefect.runtime.flow_run.id)}
    with tracking.trial_run(
        project, cfg.tracking.experiment, params, f"trial {flow_run_name}", links
    ) as tracker:
        outcome: dict[str, str] = {}
        for stage in stage_names(cfg):
            stage_task = run_stage.with_options(
                name=stage,
                task_run_name=stage,
                retries=settings.retries,
                retry_delay_seconds=settings.retry_delay_seconds,
            )
            try:
                outcome[stage] = stage_task(
                    root, stage, tracker.run_id, settings.stage_timeout_minutes * 60.0
                )
            except StageFailed:
                tracker.set_tags({tag_key(stage): "failed", "ldm.failed_stage": stage})
                raise
            tracker.set_tags({tag_key(stage): outcome[stage]})
        ran = sum(status == "ran" for status in outcome.values())
        tracker.log_metrics(
            {
                "stages_ran": ran,
                "stages_skipped": len(outcome) - ran,
                "wall_seconds": time.perf_counter() - started,
            }
        )
    return {"mlflow_parent_run_id": tracker.run_id, "stages": outcome}


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.trial ROOT [--result-file PATH]`: what `ldm run` starts."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.trial", description=trial.__doc__)
    parser.add_argument("root", help="project root (holds dvc.yaml and params.yaml)")
    parser.add_argument("--result-file", help="write the flow's result here as JSON")
    args = parser.parse_args(argv)
    state = trial(args.root, return_state=True)
    if not state.is_completed():
        print(f"trial failed: {state.message}", file=sys.stderr)
        return 1
    outcome = state.result()
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(outcome, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
