"""How a stage runs under a flow: DVC called one way, the stage's environment and its lines.

Every DVC command in this package goes through `dvc` (in this process group, stopped with all it
started on a timeout or a cancel); `repro` runs a stage with it and `dvc_step` a transfer of the
stage's files. A stage that fails raises `StageFailed`, which carries the exit code the trial's
retries and its own exit code read. The stage's lines go to the terminal of `ldm run` and to
Prefect's log under `STAGE_LOG`, where a trial follows a stage that runs on another host.

The trial (flows/trial.py), its half of a stage on a work pool (flows/pool.py) and the worker's
half (flows/remote.py) build on this module; it imports none of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from prefect.logging import get_run_logger

from ldm import tracking
from ldm.errors import INTERRUPTED_DURING, Interrupted

# DVC's advice after each stage (git add dvc.lock, autostage, dvc push) is for people running it
# by hand; repeated after every stage of a trial it buries the progress.
DVC_HINTS = re.compile(
    r"^(To track the changes with git, run:|To enable auto staging, run:|\s*git add |"
    r"\s*dvc config core\.autostage|Use `dvc push` to send|Updating lock file|\s*$)"
)
SKIPPED = re.compile(r"Stage '.*' didn't change, skipping")
# The stages' own lines go to Prefect's log under this name, so that a trial can follow a stage
# that runs on another host (flows/pool.py) by its lines alone.
STAGE_LOG = "stage"


class StageFailed(RuntimeError):
    def __init__(self, stage: str, exit_code: int | None, detail: str) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage, self.exit_code = stage, exit_code


def stage_env(parent_run_id: str) -> dict[str, str]:
    """The stage's environment: this interpreter's scripts first on PATH, the parent run's id."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env[tracking.PARENT_RUN_ENV] = parent_run_id
    return env


def stage_log() -> logging.LoggerAdapter:
    run_logger = get_run_logger()
    return type(run_logger)(run_logger.logger.getChild(STAGE_LOG), run_logger.extra)


def say(line: str) -> None:
    """A line for the terminal of `ldm run` and for Prefect's log."""
    print(line, flush=True)
    stage_log().info(line)


def note(line: str) -> None:
    """A line of the stage's own, indented as the stage's output is."""
    print(f"  {line}", flush=True)
    stage_log().info(line)


def dvc(
    root: Path,
    *args: str,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    each_line: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`dvc ARGS` in `root` with this interpreter's DVC. Its stdout and stderr come back apart;
    with `each_line`, together, each line also passed to `each_line` as it comes (in the
    caller's context, so Prefect's run logger works there).

    On a timeout (subprocess.TimeoutExpired) or an interruption it stops DVC and everything it
    started (`stop_tree`), shows their last lines, then raises.
    """
    # Same process group as the trial: Ctrl+C, a closed terminal or a kill of the group reach
    # DVC too, so no stage can outlive its trial and write beside the next one.
    command = [sys.executable, "-m", "dvc", *args]
    stderr = subprocess.STDOUT if each_line else subprocess.PIPE
    proc = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    try:
        if each_line is None:
            out, err = proc.communicate(timeout=timeout_s)
        else:
            lines: list[str] = []

            def pump() -> None:
                for raw in proc.stdout:
                    lines.append(raw.rstrip())
                    each_line(lines[-1])

            context = contextvars.copy_context()
            reader = threading.Thread(target=context.run, args=(pump,), daemon=True)
            reader.start()
            proc.wait(timeout=timeout_s)
            reader.join(timeout=10)
            out, err = "\n".join(lines), ""
    except BaseException:  # a timeout, Ctrl+C or a cancelled flow (a stage resumes later)
        stop_tree(proc)  # dvc, `ldm <stage>` and its workers
        if each_line is not None:
            reader.join(timeout=2)  # the stage's last words: where it stopped
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# How long a stopped stage may take to end by itself before it is killed: an `ldm` stage marks
# its MLflow run and prints where it stopped in about a second, and the whole trial must be gone
# within 10 s of Ctrl-C.
STOP_GRACE_S = 6.0


def stop_tree(proc: subprocess.Popen) -> None:
    """Stop a process and everything it started, then reap it.

    SIGINT, as Ctrl-C in a terminal would send it to each of them: `dvc` waits for its stage
    command and records the failure, `ldm <stage>` stops where it is (its last resume point
    stands), torchrun stops its ranks. Whatever still runs after STOP_GRACE_S is killed.
    """
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(family, timeout=STOP_GRACE_S)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    proc.wait()


def repro(root: Path, stage: str, env: dict[str, str], timeout_s: float) -> bool:
    """`dvc repro --single-item <stage>`, its output shown as it comes; True if it ran.

    Interrupted, it stops DVC and the stage; the stage says where it stopped (or this says that
    it stopped before the stage's own code ran), and the interruption goes on up, marked as said.
    """
    said: list[str] = []

    def show(line: str) -> None:
        if said:  # the stage said where it stopped: DVC's "failed to reproduce" adds nothing
            return
        if not DVC_HINTS.match(line):
            note(line)
        if line.startswith(INTERRUPTED_DURING):
            said.append(line)

    try:
        done = dvc(
            root, "repro", "--single-item", stage, timeout_s=timeout_s, env=env, each_line=show
        )
    except subprocess.TimeoutExpired:
        raise StageFailed(stage, None, f"timed out after {timeout_s / 60:.0f} min") from None
    except Interrupted as err:
        if not said:
            note(f"interrupted while DVC prepared {stage}: run `ldm run` to go on")
        err.said = True
        raise
    lines = done.stdout.splitlines()
    if done.returncode != 0:
        found = re.findall(r"exited with (-?\d+)", done.stdout)
        exit_code = int(found[-1]) if found else None
        cause = next((ln for ln in reversed(lines) if ln and not DVC_HINTS.match(ln)), "")
        raise StageFailed(stage, exit_code, f"failed (exit code {exit_code}): {cause}")
    return not any(SKIPPED.search(line) for line in lines)


def dvc_step(root: Path, stage: str, *args: str, timeout_s: float) -> None:
    """`dvc ARGS` as a step of `stage` (a push or a pull of its files): a failure fails the
    stage, retried unless a setting is missing."""
    command = f"dvc {' '.join(args)}"
    try:
        done = dvc(root, *args, timeout_s=timeout_s)
    except subprocess.TimeoutExpired:
        raise StageFailed(stage, None, f"`{command}` timed out") from None
    if done.returncode == 0:
        return
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    cause = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else "")
    if "no remote specified" in cause:
        raise StageFailed(
            stage, 1, f"`{command}`: no DVC remote is set in {root}: `dvc remote add -d ...`"
        )
    raise StageFailed(stage, None, f"`{command}` failed: {cause}")
