"""Ctrl-C, a cancelled job and a crash, as a user meets them: `ldm run`, `ldm <stage>` and `dvc
repro` stopped while a model trains, every process gone in seconds, one line, and the next run
resumes (after a crash too) and retries a transient failure."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import ldm_env, set_params

pytestmark = pytest.mark.slow

WORK = Path("data/.work/train_diffusion@plain-0")
MODEL = Path("data/checkpoints/diffusion-plain-0")
# Long enough to be stopped mid-way: a resume point every 20 steps.
LONGER = {"diffusion.steps": 400, "diffusion.checkpoint_every": 20, "diffusion.sample_every": 400}
LINE = re.compile(
    r"interrupted during train_diffusion@plain-0 at step (\d+); "
    r"the last resume point is step (\d+): run `(.+)` to go on"
)


def start(root: Path, command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`command` in `root` as a terminal starts it: in a process group of its own."""
    with open(log, "w") as out:
        return subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def newest_step(root: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in (root / WORK).glob("step-*")]
    return max(steps, default=-1)


def wait_for_step(root: Path, proc: subprocess.Popen, step: int, log: Path) -> None:
    deadline = time.monotonic() + 600
    while newest_step(root) < step:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no resume point at step {step}:\n{log.read_text()}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen, signum: int, at_least: int) -> tuple[int, float]:
    """`signum` to the process group, as Ctrl-C (or a cancelled job) sends it: the exit code,
    and the seconds until the last of the `at_least` processes it had started was gone."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) >= at_least, family
    sent = time.monotonic()
    os.killpg(proc.pid, signum)
    code = proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=max(0.0, sent + 10 - time.monotonic()))
    assert not alive, [p.cmdline() for p in alive]
    return code, time.monotonic() - sent


def runs_of(root: Path, name: str) -> list:
    """MLflow runs named `name`, newest first."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ldm-poc").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"])
    if name == "trial *":
        return [run for run in runs if run.data.tags.get("ldm.kind") == "trial"]
    return [run for run in runs if run.info.run_name == name]


def assert_one_line(output: str, again: str) -> tuple[int, int]:
    """The stop is told in one line naming the step and the resume point; no dump, no trace."""
    (found,) = LINE.findall(output)
    reached, resume_point, command = int(found[0]), int(found[1]), found[2]
    assert command == again and reached >= resume_point >= 20, output
    for noise in ("Traceback", "Unable to connect", "Crashed", "ERROR", "Aborted"):
        assert noise not in output, output
    return reached, resume_point


def test_ctrl_c_sigterm_and_a_crash_stop_ldm_run_and_the_next_run_resumes(
    bench_trial_copy: Path, prefect_server
) -> None:
    root = bench_trial_copy
    model_before = sorted(p.name for p in (root / MODEL).iterdir())
    sets = [f"--set={key}={value}" for key, value in LONGER.items()]
    # Ctrl-C, with Prefect's own temporary server, as a user has it.
    own_server = {k: v for k, v in ldm_env().items() if k != "PREFECT_API_URL"}
    own_server["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    log = root.parent / "ctrl-c.log"
    proc = start(root, [sys.executable, "-m", "ldm", "run", *sets], log, own_server)
    wait_for_step(root, proc, 40, log)
    code, seconds = stop(proc, signal.SIGINT, at_least=5)  # ldm run, flow, server, dvc, stage
    out = log.read_text()
    assert code == 130 and seconds < 10, out
    _, resume_point = assert_one_line(out, "ldm run")
    # The trial and the stage are KILLED in MLflow; every finished output is still in place,
    # the model being retrained included (its last finished version).
    (trial, *_) = runs_of(root, "trial *")
    assert trial.info.status == "KILLED"
    assert runs_of(root, "train_diffusion@plain-0")[0].info.status == "KILLED"
    assert sorted(p.name for p in (root / MODEL).iterdir()) == model_before
    for output in ("data/prepared", "data/checkpoints/tokenizer-plain-0", "data/latents/plain-0"):
        assert (root / output).is_dir(), output

    # SIGTERM, as a cancelled CI job sends it, to the next run, which resumed.
    log = root.parent / "sigterm.log"
    proc = start(root, [sys.executable, "-m", "ldm", "run"], log, ldm_env())
    wait_for_step(root, proc, resume_point + 20, log)
    code, seconds = stop(proc, signal.SIGTERM, at_least=4)  # ldm run, flow, dvc, stage
    out = log.read_text()
    assert code == 143 and seconds < 10, out
    assert f"resuming at step {resume_point}" in out, out
    _, resume_point = assert_one_line(out, "ldm run")

    # A crash (every process of the trial killed at once, as when the machine goes): nothing
    # marks the runs, nothing says a word; the resume point stands all the same.
    log = root.parent / "crash.log"
    proc = start(root, [sys.executable, "-m", "ldm", "run"], log, ldm_env())
    wait_for_step(root, proc, resume_point + 20, log)
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    proc.wait()
    crashed_at = newest_step(root)
    assert crashed_at >= resume_point + 20

    # The next run resumes there, marks the crashed trial's runs KILLED, and meets a transient
    # failure in evaluate (exit 3 once), which it retries; the trial then finishes.
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
    evaluate = dvc_yaml["stages"]["evaluate"]  # a matrix stage: its body is its own
    evaluate["cmd"] = "test -f .failed-once || { touch .failed-once; exit 3; }; " + evaluate["cmd"]
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "ldm", "run", "--set=orchestration.retry_delay_seconds=0"],
        cwd=root,
        env=ldm_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    out, lines = done.stdout + done.stderr, done.stdout.splitlines()
    assert done.returncode == 0, out
    assert f"resuming at step {crashed_at}" in out, out
    for stage in ("validate", "prepare", "train_tokenizer@plain-0", "encode@plain-0"):
        assert any(line.split() == [stage, "skipped"] for line in lines), stage
    crashed = [run for run in runs_of(root, "trial *") if run.info.status == "KILLED"]
    assert len(crashed) == 3, "Ctrl-C, SIGTERM and the crash"
    assert "of a killed trial is marked KILLED" in out
    assert "! evaluate@plain-0: failed (exit code 3)" in out
    assert "> evaluate@plain-0 (attempt 2)" in out
    assert "Trial answer" in done.stdout


def test_ldm_stage_alone_and_dvc_repro_stop_the_same_way(bench_trial_copy: Path) -> None:
    root, env = bench_trial_copy, dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])  # `ldm`
    set_params(root / "params.yaml", LONGER)
    model_before = sorted(p.name for p in (root / MODEL).iterdir())
    # `ldm train-diffusion` from a terminal, SIGTERM.
    command = ["ldm", "train-diffusion", "--variant", "plain"]
    log = root.parent / "stage.log"
    proc = start(root, [sys.executable, "-m", *command], log, env)
    wait_for_step(root, proc, 40, log)
    family = psutil.Process(proc.pid).children(recursive=True)  # its data loader workers
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == 143, log.read_text()
    assert not psutil.wait_procs(family, timeout=max(0.0, sent + 10 - time.monotonic()))[1]
    _, resume_point = assert_one_line(log.read_text(), " ".join(command))
    assert runs_of(root, "train_diffusion@plain-0")[0].info.status == "KILLED"

    # `dvc repro`, Ctrl-C: DVC reports the stage's failure, the stage its line; the previous
    # model stays in place (dvc.yaml: persist), so `ldm sample` still works meanwhile.
    log = root.parent / "dvc.log"
    proc = start(root, [sys.executable, "-m", "dvc", "repro", "train_diffusion@plain-0"], log, env)
    wait_for_step(root, proc, resume_point + 20, log)
    code, _ = stop(proc, signal.SIGINT, at_least=2)  # dvc and the stage
    out = log.read_text()
    assert code != 0 and f"resuming at step {resume_point}" in out, out
    (found,) = LINE.findall(out)
    assert found[2] == "dvc repro", out
    assert sorted(p.name for p in (root / MODEL).iterdir()) == model_before
    sampled = subprocess.run(
        [sys.executable, "-m", "ldm", "sample", str(root.parent / "grid.png")]
        + ["--variant", "plain", "-n", "2"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sampled.returncode == 0, sampled.stdout + sampled.stderr
