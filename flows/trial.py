"""The trial as a Prefect flow: one task per stage, in DAG order, each run through `dvc repro`.

Who owns what: DVC decides *what reruns* (a stage whose deps and params did not change is
skipped, and `dvc.lock` stays the provenance); Prefect decides *when and where*, retries a stage
after a transient failure, enforces its timeout and keeps the run history; MLflow records *what
happened*: this flow opens the trial's parent run and each stage process logs a nested run under
it (the parent id travels in LDM_PARENT_RUN_ID through `dvc repro` to `ldm <stage>`).

The person watching `ldm run` reads the stages' own lines (progress, results, errors) as they
come, printed by flows/stage_run.py; Prefect's log gets the same lines.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import prefect.runtime
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.pool import check_setup, run_on_pool
from flows.stage_run import StageFailed, repro, say, stage_env
from ldm import config, tracking
from ldm.errors import Interrupted, stop_on_signals
from ldm.stages import stage_names

# `ldm <stage>` exits 1 when the data or setup needs a fix and 2 on a bad config: retrying those
# cannot help. Anything else (an unexpected error, a killed process, a locked store) is retried.
FINAL_EXIT_CODES = (1, 2)


def is_transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's retry hook)
    """Retry unless the stage said its input is wrong: the same input would fail again."""
    error = state.data if isinstance(state.data, BaseException) else None
    return not (isinstance(error, StageFailed) and error.exit_code in FINAL_EXIT_CODES)


def tag_key(stage: str) -> str:
    """MLflow tag keys allow no '@': `encode@plain` is recorded as `stage.encode/plain`."""
    return "stage." + stage.replace("@", "/")


@task(cache_policy=NO_CACHE, retry_condition_fn=is_transient)
def run_stage(
    root: str, stage: str, parent_run_id: str, timeout_s: float, pool: str | None = None
) -> str:
    """Run one stage through DVC (which skips it when nothing changed), here or on the work
    pool `pool`: "ran" or "skipped"."""
    attempt = prefect.runtime.task_run.run_count
    say(f"> {stage}" + (f" (attempt {attempt})" if attempt > 1 else ""))
    try:
        if pool:
            ran = run_on_pool(Path(root), stage, pool, parent_run_id, timeout_s)
        else:
            ran = repro(Path(root), stage, stage_env(parent_run_id), timeout_s)
    except Interrupted as err:
        if pool and not err.said:
            say(
                f"interrupted during {stage}: its flow run on {pool!r} is cancelled; "
                "run `ldm run` to go on"
            )
            err.said = True
        raise
    except StageFailed as err:
        say(f"! {err}")
        raise
    if not ran:
        say(f"  {stage}: up to date, skipped")
    return "ran" if ran else "skipped"


@flow(name="ldm-trial")
def trial(root: str, overrides: list[str] | None = None) -> dict:
    """Every stage of the trial in DAG order. Returns the MLflow parent run and what ran."""
    project = Path(root)
    params = project / "params.yaml"
    cfg = config.load(params)
    settings = cfg.orchestration
    started = time.perf_counter()
    # Name the MLflow run after the Prefect flow run, so either UI leads to the other.
    flow_run_name = prefect.runtime.flow_run.name
    links = {"prefect.flow_run_id": str(prefect.runtime.flow_run.id)}
    for name in tracking.close_abandoned_runs(project, cfg.tracking.experiment):
        say(f"MLflow run {name!r} of a killed trial is marked KILLED")
    with tracking.trial_run(
        project, cfg.tracking.experiment, params, f"trial {flow_run_name}", links, overrides
    ) as tracker:
        outcome: dict[str, str] = {}
        stages = stage_names(cfg)
        pool = settings.gpu_pool
        remote = [s for s in stages if pool and s.split("@")[0] in settings.gpu_stages]
        if remote:
            check_setup(project, remote[0], pool)
        for stage in stages:
            stage_task = run_stage.with_options(
                name=stage,
                task_run_name=stage,
                retries=settings.retries,
                retry_delay_seconds=settings.retry_delay_seconds,
            )
            try:
                timeout_s = settings.stage_timeout_minutes * 60.0
                outcome[stage] = stage_task(
                    root, stage, tracker.run_id, timeout_s, pool if stage in remote else None
                )
            except Interrupted as err:
                if not err.said:  # between two stages
                    say(f"interrupted before {stage}: run `ldm run` to go on")
                tracker.set_tags({tag_key(stage): "interrupted"})
                raise
            except StageFailed as err:
                tracker.set_tags({tag_key(stage): "failed", "ldm.failed_stage": stage})
                tracker.set_tags({"ldm.error": str(err)[:4000]})
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
    return {
        "mlflow_parent_run_id": tracker.run_id,
        "mlflow_experiment_id": tracker.experiment_id,
        "stages": outcome,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.trial ROOT [--set K=V ...] [--result-file PATH]`: what `ldm run` starts.

    Exits with the failed stage's code class: 1 data or setup, 2 config, 3 anything else; 130
    when interrupted (`ldm run` sends SIGINT for Ctrl-C and SIGTERM alike, see ldm/cli/trial.py).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.trial", description=trial.__doc__)
    parser.add_argument("root", help="project root (holds dvc.yaml and params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--result-file", help="write the flow's result here as JSON")
    args = parser.parse_args(argv)
    stop_with_parent()
    try:
        with stop_on_signals():
            state = trial(args.root, args.overrides, return_state=True)
    except Interrupted as err:
        # Prefect's own shutdown messages (the run's Crashed state and its events) are for its
        # API and log, not for the person who pressed Ctrl-C: the stage's line said it all.
        quiet_prefect_console(Path(args.root))
        return err.exit_code
    if not state.is_completed():
        try:
            state.result()
        except StageFailed as err:
            print(f"trial failed at {err}", file=sys.stderr)
            return err.exit_code if err.exit_code in FINAL_EXIT_CODES else 3
        except BaseException as err:  # noqa: BLE001 (reported, then a non-zero exit)
            print(f"trial failed: {err}", file=sys.stderr)
        return 3
    outcome = state.result()
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(outcome, indent=2))
    return 0


def stop_with_parent() -> None:
    """Interrupt this trial when the process that started it (`ldm run`) is gone.

    `ldm run` starts the flow in a session of its own so that a terminal's Ctrl-C reaches the
    flow once, through `ldm run`, and not the Prefect server beside it; a killed `ldm run` can
    then no longer take the flow with it, so the flow watches for that itself.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def quiet_prefect_console(root: Path) -> None:
    """From now on, Prefect's console lines go to `.ldm/prefect-shutdown.log` instead."""
    (root / ".ldm").mkdir(exist_ok=True)
    log = logging.FileHandler(root / ".ldm" / "prefect-shutdown.log")
    log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for logger in (logging.getLogger(), *map(logging.getLogger, logging.root.manager.loggerDict)):
        for handler in list(getattr(logger, "handlers", [])):  # a copy: the loop edits it
            if isinstance(handler, logging.StreamHandler) and handler.stream in (
                sys.stderr,
                sys.stdout,
            ):
                logger.removeHandler(handler)
                logger.addHandler(log)


if __name__ == "__main__":
    sys.exit(main())
