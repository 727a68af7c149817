"""How long the default trial takes, stage by stage, as a new user meets it.

Copies the project's tracked files into a fresh folder (a new `git init`, an empty `data/`, the
bundled sample written by `ldm run` itself), runs `ldm run` with this interpreter's venv, then
runs it again with nothing changed. Prints one table: each stage's own wall time (what its
MLflow run recorded as `cost/wall_seconds`), the orchestration overhead (the trial's wall time
minus the stages' own: process starts, DVC, Prefect, MLflow), and the re-run. A fixed workload
timed before and after the trial (training steps of the default tokenizer and DiT sizes) says how
fast this machine was meanwhile, since a shared machine's speed drifts from day to day.

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


# A fixed slice of the default trial's compute: 10 steps of the f4d8 tokenizer at batch 32 and
# 30 of the T/2 DiT at batch 128, forward, backward and update, in a fresh process.
PROBE = """
import time, torch
from ldm.diffusion.model import create_model
from ldm.tokenizer.model import Tokenizer, arch_from_preset
torch.manual_seed(0)
tok, dit = Tokenizer(arch_from_preset("f4d8", 32)), create_model("T/2", 8, 8, 6)
x, z = torch.rand(32, 3, 32, 32) * 2 - 1, torch.randn(128, 8, 8, 8)
t, y = torch.rand(128), torch.randint(0, 6, (128,))
def steps(model, n, loss):
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    for _ in range(n):
        opt.zero_grad(); loss().backward(); opt.step()
steps(tok, 2, lambda: tok(x)[0].sub(x).abs().mean())
started = time.perf_counter()
steps(tok, 10, lambda: tok(x)[0].sub(x).abs().mean())
steps(dit, 30, lambda: dit(z, t, y).square().mean())
print(time.perf_counter() - started)
"""


def probe_seconds() -> float:
    """Seconds of the fixed workload on this machine now."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


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
        probe_before = probe_seconds()
        extra = [a for o in args.overrides for a in ("--set", o)]
        total, _ = timed_run(folder, extra)
        own = stage_seconds(folder)
        rerun, rerun_output = timed_run(folder, [])
        probe_after = probe_seconds()
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
    print(f"machine probe (fixed workload), s: {probe_before:.1f} before, {probe_after:.1f} after")
    if "Nothing changed" not in rerun_output:
        print("note: the re-run ran stages:\n" + rerun_output)


if __name__ == "__main__":
    main()
