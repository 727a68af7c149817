"""`ldm run`: the whole trial as a Prefect flow in a child process (`ldm` never imports Prefect)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ldm.cli.common import (
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    EXIT_USER,
    SetOption,
    app,
    fail,
    open_project,
    user_errors,
)
from ldm.cli.tools import sample_data
from ldm.errors import STOP_SIGNALS, Interrupted, stop_on_signals

if TYPE_CHECKING:
    import subprocess


@app.command()
def run(
    overrides: SetOption = None,
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            help="Run with this params file: it is validated, then replaces params.yaml "
            "(the pipeline's file; the previous one is kept under .ldm/params-history/).",
        ),
    ] = None,
    sample_if_empty: Annotated[
        bool,
        typer.Option(
            help="When data.raw_dir holds no files, write the bundled sample there and use it."
        ),
    ] = True,
) -> None:
    """Run the whole trial as a Prefect flow; each stage runs through `dvc repro`.

    --set values are written into params.yaml first (as `dvc exp run -S` does), so DVC and the
    records agree on what ran. Stages whose inputs did not change are skipped; when nothing
    changed at all, nothing runs and the last trial's answer is shown again.
    """
    from ldm import tracking
    from ldm.params_file import replace_params, write_overrides
    from ldm.stages.trial_lock import trial_lock

    paths, cfg = open_project(params, overrides)  # exit 2 on a bad file, before any change
    params_path = paths.root / "params.yaml"
    with user_errors(), interrupted_before_the_trial():
        tracking.check_store(paths.root)
        with trial_lock(paths.root, "ldm run") as lock:
            ensure_images(paths.resolve(cfg.data.raw_dir), sample_if_empty, cfg.data.resolution)
            if params is not None:
                typer.echo(replace_params(params_path, params))
            if overrides:
                for line in write_overrides(params_path, overrides):
                    typer.echo(line)
            if nothing_changed(paths.root):
                typer.echo("Nothing changed since the last trial: no stage ran. Its answer:")
                # Without its stage list: "ran" there would read as ran now.
                show_answer(paths.root, last_trial(paths.root), list_stages=False)
                return
            outcome = start_trial_flow(paths.root, overrides or [], lock)
    record_trial(paths.root, outcome)
    show_answer(paths.root, outcome, list_stages=True)


@contextmanager
def interrupted_before_the_trial() -> Iterator[None]:
    """Ctrl-C before the flow starts (a store check, the sample being written) stops at once."""
    try:
        with stop_on_signals():
            yield
    except Interrupted as err:
        typer.secho("interrupted before any stage ran: run `ldm run` to start", err=True)
        raise typer.Exit(err.exit_code) from None


def nothing_changed(root: Path) -> bool:
    """True when every stage is up to date and a trial already recorded the result."""
    # DVC's own API (what `dvc status` calls), not a `dvc` process: the one place that runs
    # DVC commands is flows/stage_run.py, which `ldm` may not import (it never imports
    # Prefect), and this question needs no process, output or timeout of its own.
    from dvc.repo import Repo

    if last_trial(root) is None:
        return False
    try:
        with Repo(str(root)) as repo:
            return repo.status() == {}
    except Exception:  # DVC cannot tell (e.g. a broken dvc.yaml): the trial runs and says why
        return False


def last_trial(root: Path) -> dict | None:
    record = root / ".ldm" / "last-trial.json"
    return json.loads(record.read_text()) if record.is_file() else None


def record_trial(root: Path, outcome: dict) -> None:
    from ldm.stages.trial_lock import state_folder

    (state_folder(root) / "last-trial.json").write_text(json.dumps(outcome, indent=2))


def show_answer(root: Path, outcome: dict | None, list_stages: bool) -> None:
    """The trial's answer: what ran (`list_stages`), the report's summary, where to look next."""
    from ldm import tracking

    if outcome is None:
        return
    if list_stages:
        for stage, status in outcome["stages"].items():
            typer.echo(f"  {stage:<28} {status}")
    summary = root / "data" / "reports" / "summary.json"
    if summary.is_file():
        from ldm.cli.summary import print_summary

        print_summary(summary)
    run_id, experiment_id = outcome["mlflow_parent_run_id"], outcome["mlflow_experiment_id"]
    typer.echo(f"MLflow: {tracking.run_url(root, experiment_id, run_id)}  (serve it: `ldm ui`)")


def ensure_images(raw_dir: Path, sample_if_empty: bool, resolution: int) -> None:
    """Fail early, or write the sample, when the data folder cannot feed a trial."""
    from ldm.data.validate import dvc_blockers

    if not raw_dir.is_dir() or not any(entry.is_file() for entry in raw_dir.rglob("*")):
        if not sample_if_empty:
            raise fail(
                f"{raw_dir} holds no files: put your images there (sub-folders = classes)",
                EXIT_USER,
            )
        typer.echo(
            f"{raw_dir} holds no files: writing the bundled sample dataset there and "
            "using it. To trial your own images, replace it with them."
        )
        # Crops at least as large as the trial's resolution pass `validate.min_side` (the paper
        # preset asks for 256 px).
        sample_data(raw_dir, size=max(128, resolution))
    blockers = dvc_blockers(raw_dir)
    if blockers:
        listed = "\n".join(f"  {raw_dir / path}" for path in blockers[:20])
        raise fail(
            f"{len(blockers)} broken symlink(s) under {raw_dir} stop DVC from hashing "
            f"the data:\n{listed}\nFix their targets or remove the links, then run "
            "again (`ldm validate` lists every other problem too).",
            EXIT_USER,
        )


# From the first Ctrl-C to the last process of the trial gone: the flow stops its stage
# (flows/stage_run.py gives it 6 s), marks its runs and stops Prefect's server in the rest.
STOP_LIMIT_S = 9.5


def start_trial_flow(root: Path, overrides: list[str], lock: int) -> dict:
    """Run `python -m flows.trial` in its own process: `ldm` itself never imports Prefect.

    Its output (every stage's progress and result lines) goes straight to this terminal;
    Prefect's run logs go to its API only (see flows/__init__.py), its other lines are kept
    to warnings. It holds the trial's `lock` too, so no trial starts before it has ended.

    The flow runs in a session of its own, and this process passes it Ctrl-C (and SIGTERM,
    SIGHUP) once, as SIGINT: a terminal's Ctrl-C would otherwise also reach the Prefect server
    the flow started, which then dies under it while the flow still reports to it. The flow
    stops its stage, which says where it stopped; a second signal kills the flow's session at
    once; after STOP_LIMIT_S it is killed anyway.
    """
    import os
    import subprocess
    import sys
    import tempfile

    env = {
        # Prefect's local server keeps its run history in the project unless one is configured.
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        **os.environ,
        "PYTHONUNBUFFERED": "1",
    }
    with tempfile.TemporaryDirectory() as scratch:
        result_file = Path(scratch) / "trial.json"
        command = [sys.executable, "-m", "flows.trial", str(root)]
        command += ["--result-file", str(result_file)]
        command += [arg for override in overrides for arg in ("--set", override)]
        flow = subprocess.Popen(command, env=env, start_new_session=True, pass_fds=(lock,))
        signum = wait_passing_signals(flow)
        if signum is not None:
            raise typer.Exit(128 + signum)
        if flow.returncode != 0 or not result_file.is_file():
            code = (
                flow.returncode if flow.returncode in (EXIT_USER, EXIT_USAGE) else EXIT_UNEXPECTED
            )
            raise fail(
                "the trial stopped (the lines above name the stage and why). Its MLflow run "
                "holds what ran before: `ldm ui`. Fix the cause and `ldm run` again: finished "
                "stages are skipped and training resumes from its last checkpoint.",
                code,
            )
        return json.loads(result_file.read_text())


def wait_passing_signals(flow: subprocess.Popen) -> int | None:
    """Wait for the flow, passing it a stop signal as SIGINT; the signal, if one came."""
    import contextlib
    import os
    import signal
    import time

    caught: list[tuple[int, float]] = []

    def kill_session() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(flow.pid, signal.SIGKILL)

    def on_signal(signum: int, frame: object) -> None:
        if caught:  # the second: stop now
            kill_session()
            os._exit(128 + caught[0][0])
        caught.append((signum, time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.kill(flow.pid, signal.SIGINT)

    before = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        while flow.poll() is None:
            if caught and time.monotonic() - caught[0][1] > STOP_LIMIT_S:
                typer.secho(
                    f"the trial did not stop within {STOP_LIMIT_S:.0f} s and was killed; "
                    "run `ldm run` to go on",
                    err=True,
                )
                kill_session()
            time.sleep(0.1)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        kill_session()  # whatever the flow left behind in its session goes with it
    return caught[0][0] if caught else None
