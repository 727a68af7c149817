"""Shared fixtures: a tiny project in tmp_path (the repo's dvc.yaml, params.yaml and code, a
small real image folder), one tiny trial trained per session that the stage tests read or copy,
one `ldm run` trial per session that the flow tests copy, and one Prefect test server per
session for them."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    import torch

    from tests.stage_run import TinyTrial

REPO = Path(__file__).resolve().parents[1]

# Small enough for a CPU test, large enough to pass the default quality suite's shape.
TINY_PARAMS = {
    "data.resolution": 16,
    "data.workers": 1,
    "validate.min_side": 32,
    "validate.min_images": 30,
    "validate.min_images_per_class": 5,
    "prepare.shard_size": 64,
    "tokenizer.steps": 4,
    "tokenizer.batch_size": 8,
    "tokenizer.warmup_steps": 1,
    "tokenizer.eval_every": 2,
    "tokenizer.checkpoint_every": 2,
    "tokenizer.grid_images": 4,
    "align.phases": [
        {"share": 0.5, "vf_weight": 0.5, "use_margins": False},
        {"share": 0.5, "vf_weight": 0.1, "use_margins": True},
    ],
    "evaluate.batch_size": 32,
    "evaluate.num_samples": 16,
    "evaluate.nearest_k": 3,
    "diffusion.curve_samples": 8,
    "diffusion.steps": 4,
    "diffusion.batch_size": 8,
    "diffusion.micro_batch_size": 8,
    "diffusion.warmup_steps": 1,
    "diffusion.checkpoint_every": 2,
    "diffusion.sample_every": 4,
    "sample.steps": 4,
    "sample.batch_size": 16,
}


def set_params(params_path: Path, values: dict[str, object]) -> None:
    """Write `section.key[.key...]: value` into a params file (no comments to keep here)."""
    raw = yaml.safe_load(params_path.read_text())
    for dotted, value in values.items():
        *parents, key = dotted.split(".")
        node = raw
        for parent in parents:
            node = node[parent]
        node[key] = value
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))


def killed_after(n_steps: int):  # noqa: ANN201
    """A progress callback that stops a training loop after `n_steps`, as a kill would."""
    seen = [0]

    def progress(n: int, **status: float) -> None:
        seen[0] += n
        if seen[0] >= n_steps:
            raise KeyboardInterrupt

    return progress


# A DINOv2 small enough for CPU tests; weights under the official checkpoint's key layout.
TINY_VIT = {"embed_dim": 24, "depth": 2, "num_heads": 2}


def official_dinov2_state(dim: int, depth: int) -> dict[str, torch.Tensor]:
    """Random weights under the official DINOv2 key layout (facebookresearch/dinov2 ViT)."""
    import torch

    g = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    state = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, 1 + 37 * 37, dim),
        "mask_token": r(1, dim),
        "patch_embed.proj.weight": r(dim, 3, 14, 14),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": 1 + r(dim),
        "norm.bias": r(dim),
    }
    for n in range(depth):
        p = f"blocks.{n}."
        state |= {
            p + "norm1.weight": 1 + r(dim),
            p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim),
            p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim),
            p + "attn.proj.bias": r(dim),
            p + "ls1.gamma": r(dim),
            p + "norm2.weight": 1 + r(dim),
            p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(4 * dim, dim),
            p + "mlp.fc1.bias": r(4 * dim),
            p + "mlp.fc2.weight": r(dim, 4 * dim),
            p + "mlp.fc2.bias": r(dim),
            p + "ls2.gamma": r(dim),
        }
    return state


@pytest.fixture(scope="session", autouse=True)
def quiet_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GIT_AUTHOR_NAME", "test")
    os.environ.setdefault("GIT_AUTHOR_EMAIL", "test@localhost")
    os.environ.setdefault("GIT_COMMITTER_NAME", "test")
    os.environ.setdefault("GIT_COMMITTER_EMAIL", "test@localhost")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LDM_PARENT_RUN_ID", None)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 real images in 6 class folders, written once per session."""
    from ldm.data.sample import write_sample

    folder = tmp_path_factory.mktemp("sample") / "raw"
    write_sample(folder, per_class=20, size=48, seed=0)
    return folder


def make_tiny_project(root: Path, sample_images: Path) -> None:
    """The repo's dvc.yaml and params.yaml (with TINY_PARAMS), the sample as data/raw."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(sample_images, root / "data" / "raw")
    set_params(root / "params.yaml", TINY_PARAMS)


@pytest.fixture
def project(tmp_path: Path, sample_images: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC project: the repo's pipeline and code, tiny params, the sample as data/raw."""
    root = tmp_path / "project"
    make_tiny_project(root, sample_images)
    # dvc.yaml names the stage code as dependencies, so the project needs those files.
    shutil.copytree(REPO / "ldm", root / "ldm", ignore=shutil.ignore_patterns("__pycache__"))
    for cmd in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "tiny project"],
    ):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    monkeypatch.chdir(root)
    return root


# What validate, prepare and reference leave in a project: their outputs and MLflow runs.
PREPARED = (
    "data/validated",
    "data/prepared",
    "data/reference",
    "data/metrics/validate.json",
    "data/metrics/prepare.json",
    "data/metrics/reference.json",
    "mlflow.db",
    "mlartifacts",
)


@pytest.fixture(scope="session")
def tiny_prepared(
    tmp_path_factory: pytest.TempPathFactory, sample_images: Path
) -> Iterator[TinyTrial]:
    """A tiny project (`make_tiny_project`) after validate, prepare and reference, run once per
    session in this process through `ldm.stages.run`, the function each `ldm <stage>` command
    calls, each stage watched (tests/stage_run.py). Read it, or take `prepared_copy` (or
    `copy_outputs` PREPARED) to go on from it; writing into it fails the session."""
    from tests.stage_run import run_tiny_trial

    root = tmp_path_factory.mktemp("tiny-prepared") / "project"
    make_tiny_project(root, sample_images)
    with working_directory(root):  # as `ldm <stage>` runs: from the project
        prepared = run_tiny_trial(root, upto="reference")
    with unchanged(root):
        yield prepared


@pytest.fixture(scope="session")
def tiny_trial(
    tiny_prepared: TinyTrial, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TinyTrial]:
    """The tiny project trained and evaluated once per session: a copy of `tiny_prepared` where
    every other stage of both variants, then the report, ran as there (through
    `ldm.stages.run`, watched; `reads` holds every run's). Read it (`Paths(tiny_trial.root)`, its
    `mlflow.db`), or take `trial_copy` to change it; writing into it fails the session."""
    from tests.stage_run import run_tiny_trial

    root = tmp_path_factory.mktemp("tiny-trial") / "project"
    copy_project(tiny_prepared.root, root)
    with working_directory(root):
        trial = run_tiny_trial(root, after=tiny_prepared)
    with unchanged(root):
        yield trial


@pytest.fixture
def trial_copy(tiny_trial: TinyTrial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own copy of the tiny trial's project, MLflow store included, as cwd."""
    root = tmp_path / "project"
    copy_project(tiny_trial.root, root)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def prepared_copy(
    tiny_prepared: TinyTrial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """This test's own copy of `tiny_prepared`, as cwd: as if it had run validate, prepare and
    reference itself (their runs in its MLflow store), and nothing after them."""
    root = tmp_path / "project"
    copy_project(tiny_prepared.root, root)
    monkeypatch.chdir(root)
    return root


@contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def unchanged(root: Path) -> Iterator[None]:
    """Fails, as it ends, if any file under `root` was written, added or removed meanwhile."""
    before = file_stamps(root)
    yield
    after = file_stamps(root)
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    if changed:
        pytest.fail(f"a test wrote into {root}, shared by the session (copy it): {changed}")


def file_stamps(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under `root`, by relative path."""
    stamps = {}
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            stamps[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return stamps


def copy_project(source: Path, root: Path) -> None:
    """A whole project; its MLflow store then names the copy's own artifacts."""
    shutil.copytree(source, root, symlinks=True)
    move_mlflow_store(source, root)


def copy_outputs(source: Path, root: Path, outputs: Iterable[str]) -> None:
    """Outputs (paths relative to the project) from one project into another that has the same
    params.yaml, where the same stages would have written the same files. A copied `mlflow.db`
    names the copy's own artifacts (copy `mlartifacts` along)."""
    if (source / "params.yaml").read_text() != (root / "params.yaml").read_text():
        raise ValueError(f"{root} has other params than {source}: its outputs would differ")
    outputs = tuple(outputs)
    for output in outputs:
        (root / output).parent.mkdir(parents=True, exist_ok=True)
        if (source / output).is_dir():
            shutil.copytree(source / output, root / output, symlinks=True)
        else:
            shutil.copy2(source / output, root / output)
    if "mlflow.db" in outputs:
        move_mlflow_store(source, root)


# Where an MLflow sqlite store names artifacts: absolute paths or file URIs into its project.
ARTIFACT_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "logged_models": ("artifact_location",),
    "model_versions": ("source", "storage_location"),
}


def move_mlflow_store(source: Path, root: Path) -> None:
    """Point the artifact locations in a copied project's `mlflow.db` at the copy's own folder,
    so that what a test logs lands in its copy, and what it reads comes from there."""
    moves = [(f"{source.resolve().as_uri()}/", f"{root.resolve().as_uri()}/")]  # file:///...
    moves.append((f"{source.resolve()}/", f"{root.resolve()}/"))  # a path: Default's mlruns/0
    with closing(sqlite3.connect(root / "mlflow.db")) as db, db:
        for table, columns in ARTIFACT_COLUMNS.items():
            for column in columns:
                for old, new in moves:
                    sql = f"UPDATE {table} SET {column} = replace({column}, ?, ?)"
                    db.execute(sql, (old, new))


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the session (it costs ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def registry_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (pipeline files, tiny params) with a tiny released generator."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    set_params(root / "params.yaml", TINY_PARAMS)
    from tests.generators import write_generator

    write_generator(root, seed=0)
    monkeypatch.chdir(root)
    return root


def ldm_env(**extra: str) -> dict[str, str]:
    """The environment of an `ldm` process in a test: this session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONUNBUFFERED="1")
    return env | extra


def ldm_run(project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900):
    """`ldm run ARGS` as a user starts it: its own process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "ldm", "run", *args],
        cwd=project,
        env=env or ldm_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# The first `ldm run` trial of the tests is `bench/trial_time.py --smoke` (so the benchmark
# cannot rot unseen, without a second toy trial): its toy settings on the tests' images, and
# what the tests need on top (align phases that fit two steps, gates a toy model passes).
FIRST_TRIAL = {
    "prepare.shard_size": 50,
    "promotion.gates.staging.max_relative_fd": 1000.0,
    "align.phases": TINY_PARAMS["align.phases"],
}


@dataclass(frozen=True)
class BenchTrial:
    root: Path  # a git + DVC project after one `ldm run` and its no-change re-run
    table: str  # what the benchmark printed
    first: str  # the first `ldm run`'s output
    rerun: str  # the re-run's


@pytest.fixture(scope="session")
def bench_trial(tmp_path_factory: pytest.TempPathFactory, sample_images: Path) -> BenchTrial:
    """`bench/trial_time.py --smoke` on the tests' images with FIRST_TRIAL, once per session.
    Copy its `root` (`copy_project`) to change it."""
    folder = tmp_path_factory.mktemp("bench-trial")
    root, logs = folder / "project", folder / "logs"
    sets = [f"--set={key}={json.dumps(value)}" for key, value in FIRST_TRIAL.items()]
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "trial_time.py"), "--smoke", "--keep", str(root)]
        + ["--data", str(sample_images), "--log", str(logs), *sets],
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first, rerun = ((logs / name).read_text() for name in ("first-run.txt", "rerun.txt"))
    return BenchTrial(root, done.stdout, first, rerun)


@pytest.fixture
def bench_trial_copy(
    bench_trial: BenchTrial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """This test's own copy of the session's `ldm run` trial (`bench_trial`), as cwd."""
    root = tmp_path / "project"
    copy_project(bench_trial.root, root)
    monkeypatch.chdir(root)
    return root


def one_variant(project: Path, **sets: object) -> None:
    """The project's params with only the plain variant (and `section.key` values set)."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["variants"] = {"plain": {"preset": "f4d8", "align": False}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if sets:
        set_params(project / "params.yaml", sets)
