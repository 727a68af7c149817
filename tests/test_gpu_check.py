"""bench/gpu_check.sh --dry-run: every part starts and imports only what the GPU host has."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_wires_every_part_and_prints_one_table(tmp_path: Path) -> None:
    env = os.environ | {"PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("GPU check on CPU (dry run)")
    rows = [line.split() for line in lines[3:]]
    assert sorted({row[0] for row in rows}) == ["1", "2", "3", "4"], done.stdout
    assert all("dry" in row for row in rows), done.stdout  # no FAILED, no TIMEOUT
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"part{n}.log" for n in range(1, 5)]
