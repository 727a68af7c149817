"""How long the default trial takes, stage by stage, as a new user meets it.

Copies the project's tracked files into a fresh folder (a new `git init`, an empty `data/`, the
bundled sample written by `ldm run` itself), runs `ldm run` with this interpreter's venv, then
runs it again with nothing changed. Prints one table: each stage's own wall time (what its
MLflow run recorded as `cost/wall_seconds`), the orchestration overhead (the trial's wall time
minus the stages' own: process starts, DVC, Prefect, MLflow), and the re-run. A fixed workload
timed before and after the trial (training steps of the default tokenizer and DiT sizes) says how
fast this machine was meanwhile, since a shared machine's speed drifts from day to day.

    .venv/bin/python bench/trial_time.py [--keep DIR] [--preset NAME] [--set section.key=value ...]
    .venv/bin/python bench/trial_time.py --data ~/images   # a trial on your own images
    .venv/bin/python bench/trial_time.py --smoke     # a toy trial: the wiring, not the timing

Wall times are absolute seconds on this machine: run it with nothing else on the cores.

`--smoke` runs all of the above on a toy trial (SMOKE: one variant, 16 px, two steps of each
model, a one-step probe). It still runs every stage of the pipeline in its own process through
Prefect and DVC, twice the trial with the re-run, so it takes minutes on 2 busy cores, not
seconds: what it checks is that the script works end to end, not how long a trial takes.
`tests/test_flow.py` runs it (on the tests' small image set, `--data`) as the first trial of
its `ldm run` test, and reads the outputs `--log` keeps.
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
# The toy trial of --smoke (on top of the project's params.yaml; its first variant and seed
# alone).
SMOKE = {
    "data.resolution": 16,
    "data.workers": 1,
    "tokenizer.steps": 2,
    "tokenizer.batch_size": 8,
    "tokenizer.warmup_steps": 1,
    "tokenizer.eval_every": 2,
    "tokenizer.checkpoint_every": 2,
    "tokenizer.grid_images": 4,
    "evaluate.batch_size": 32,
    "evaluate.num_samples": 16,
    "evaluate.nearest_k": 3,
    "diffusion.steps": 2,
    "diffusion.batch_size": 8,
    "diffusion.micro_batch_size": 8,
    "diffusion.warmup_steps": 1,
    "diffusion.checkpoint_every": 2,
    "diffusion.sample_every": 2,
    "diffusion.curve_samples": 8,
    "sample.steps": 2,
    "sample.batch_size": 16,
}


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


def copy_images(source: Path, project: Path) -> None:
    """The images of `source` as the project's data/raw (copied: the originals stay untouched)."""
    if not source.is_dir():
        sys.exit(f"--data {source}: not a folder of images (sub-folders = classes)")
    shutil.copytree(source, project / "data" / "raw")


def timed_run(project: Path, args: list[str]) -> tuple[float, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PREFECT_API_URL", None)  # the project's own local Prefect server, as a user has
    # Prefect gives its local server 20 s to start by default, which a loaded machine can miss.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
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
# 30 of the T/2 DiT at batch 128, forward, backward and update, in a fresh process (argv: the
# step counts).
PROBE = """
import sys, time, torch
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
steps(tok, min(2, int(sys.argv[1])), lambda: tok(x)[0].sub(x).abs().mean())  # warm-up
started = time.perf_counter()
steps(tok, int(sys.argv[1]), lambda: tok(x)[0].sub(x).abs().mean())
steps(dit, int(sys.argv[2]), lambda: dit(z, t, y).square().mean())
print(time.perf_counter() - started)
"""
PROBE_STEPS = (10, 30)


def probe_seconds(steps: tuple[int, int] = PROBE_STEPS) -> float:
    """Seconds of the fixed workload (`steps` of the tokenizer and of the DiT) here now."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, steps)], capture_output=True, text=True, check=True
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
    parser.add_argument("--preset", help="a preset's values (presets/NAME.yaml) as --set values")
    parser.add_argument("--data", type=Path, help="trial these images (default: the sample)")
    parser.add_argument("--log", type=Path, help="write both runs' output into this folder")
    parser.add_argument("--smoke", action="store_true", help="a toy trial: the wiring only")
    args = parser.parse_args()
    probe = (1, 1) if args.smoke else PROBE_STEPS
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ldm-trial-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fresh_copy(folder)
        if args.data is not None:
            copy_images(args.data, folder)
        overrides = smoke_overrides(folder) if args.smoke else []
        if args.preset:
            overrides += preset_overrides(folder, args.preset)
        overrides += args.overrides
        probe_before = probe_seconds(probe)
        extra = [a for o in overrides for a in ("--set", o)]
        total, first_output = timed_run(folder, extra)
        own = stage_seconds(folder)
        rerun, rerun_output = timed_run(folder, [])
        if args.log is not None:
            args.log.mkdir(parents=True, exist_ok=True)
            (args.log / "first-run.txt").write_text(first_output)
            (args.log / "rerun.txt").write_text(rerun_output)
        probe_after = probe_seconds(probe)
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
    if args.smoke:
        print(f"smoke run: a toy trial ({len(SMOKE)} settings of SMOKE), not the default one")


def preset_overrides(project: Path, name: str) -> list[str]:
    """`ldm preset NAME`'s values, as --set values of the timed run."""
    from ldm.params_file import preset_values

    values = preset_values(project / "presets", name)
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def smoke_overrides(project: Path) -> list[str]:
    """SMOKE as --set values, with the project's first variant and first seed alone."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    first = next(iter(params["variants"]))
    values = {"variants": {first: params["variants"][first]}} | SMOKE
    if "trial" in params:  # code from before seeds has none
        values["trial.seeds"] = params["trial"]["seeds"][:1]
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


if __name__ == "__main__":
    main()
