"""Every script under bench/ runs in its smoke mode (toy sizes, on the CPU) and prints its table.

The benchmarks' numbers are no test; their wiring is, so that none of them rots unseen. Each
script's docstring names its smoke flag. `gpu_check.sh --dry-run` runs four parts, the fourth
being `paper_smoke.py` itself (its `main`, table and all): one run serves both scripts' tests.
`trial_time.py --smoke` is the session's first `ldm run` trial (`bench_trial` in conftest.py),
which tests/test_flow.py asserts on, table and all, and the interruption tests go on from: one
toy trial serves all three.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ldm.stages.registry import STAGES

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def smoke(script: str, cwd: Path, timeout: float, *args: str) -> str:
    """`python bench/SCRIPT --smoke ARGS` in `cwd`; its stdout, once it has exited 0."""
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("script", "printed"),
    [
        (
            "dit_throughput.py",
            ["ours (LightningDiT defaults)", "diffusers DiTTransformer2DModel", "ours / diffusers"],
        ),
        ("tokenizer_throughput.py", ["max |ours - diffusers|", "ratio ours/diffusers"]),
        ("validate_throughput.py", ["8/8 accepted", "summary: scan"]),
        ("fd_bootstrap.py", ["covariance  frechet_distance", "draws/s", "summary: rows route"]),
        ("feature_throughput.py", ["whole batch", "micro-batches", "summary: CPU_MICRO_BATCH"]),
    ],
)
def test_throughput_scripts_print_their_comparison(
    script: str, printed: list[str], tmp_path: Path
) -> None:
    out = smoke(script, tmp_path, 300)
    for text in printed:
        assert text in out, out
    assert any(rate in out for rate in ("images/s", "img/s", "draws/s")), out  # a throughput


@pytest.mark.slow
def test_memory_measures_the_pipeline_stages_at_two_sizes(tmp_path: Path) -> None:
    out = smoke("memory.py", tmp_path, 600, "--work-dir", str(tmp_path))
    table = out[out.index("peak RSS (MiB)") :].splitlines()
    assert "24 images" in table[1] and "48 images" in table[1], out
    rows = [line.split()[0] for line in table[2:] if line and not line.startswith("smoke")]
    stages = list(STAGES)[: list(STAGES).index("reference") + 1]  # the smoke stops there
    assert rows[: len(stages)] == stages, out
    assert all(line.split()[1].isdigit() for line in table[2 : 2 + len(stages)]), out
    assert not list(tmp_path.glob("ldm-memory-*")), "the projects are removed"


@pytest.fixture(scope="module")
def gpu_check_dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """`bash bench/gpu_check.sh --dry-run`, once: (its stdout, the folder of its part logs)."""
    logs = tmp_path_factory.mktemp("gpu-check")
    env = os.environ | {"PYTHON": sys.executable, "OUT": str(logs)}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, logs


@pytest.mark.slow
def test_gpu_check_dry_run_wires_every_part_and_prints_one_table(
    gpu_check_dry_run: tuple[str, Path],
) -> None:
    """Every part starts and imports only what the GPU host has."""
    out, logs = gpu_check_dry_run
    lines = out.splitlines()
    assert lines[0].startswith("GPU check on CPU (dry run)")
    rows = [line.split() for line in lines[3:]]
    assert sorted({row[0] for row in rows}) == ["1", "2", "3", "4"], out
    assert all("dry" in row for row in rows), out  # no FAILED, no TIMEOUT
    assert sorted(p.name for p in logs.iterdir()) == [f"part{n}.log" for n in range(1, 5)]


@pytest.mark.slow
def test_paper_smoke_prints_a_row_per_stage(gpu_check_dry_run: tuple[str, Path]) -> None:
    """paper_smoke.py's main, as part 4 of the GPU check runs it, with the GPU host's imports."""
    _, logs = gpu_check_dry_run
    log = (logs / "part4.log").read_text().splitlines()
    header = next(i for i, line in enumerate(log) if line.split() == ["stage", "result", "cost"])
    rows = log[header + 2 : header + 6]
    stages = [
        "reference",
        *(f"{s}@aligned-0" for s in ("train_tokenizer", "encode", "train_diffusion")),
    ]
    for row, stage in zip(rows, stages, strict=True):
        assert row.startswith(f"paper preset {stage}") and " dry " in row, "\n".join(log)
