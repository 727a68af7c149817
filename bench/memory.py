"""Peak memory of each stage at two data sizes: it must not grow with the number of images.

    python bench/memory.py --quick                  # 500 and 5,000 images at 64 px, CPU
    python bench/memory.py                          # 2,000 and 20,000 images at 64 px, CPU
    python bench/memory.py --resolution 256 --device cuda   # the size of a company set, on a GPU
    python bench/memory.py --code /path/to/checkout # measure another version of ldm
    python bench/memory.py --until reference --resolution 256   # the data stages alone
    python bench/memory.py --smoke                  # 24 and 48 images at 32 px, up to reference

For each size the script makes a project in a temporary folder: the repo's dvc.yaml and
params.yaml, and `data/raw/` with synthetic JPEGs (a colour gradient, a few shapes and mild
noise; four class folders; every file distinct). It then runs the stages as a user does,
`python -m ldm <stage> --set ...`, each in a fresh child process, and reads that child's peak
resident set from `os.wait4` (the kernel's ru_maxrss for that child and what it waited for).
The stages are the measured code's own (`ldm.stages.registry.STAGES`, in order) up to `--until`
(default train_diffusion), per-variant ones for the first variant and seed of params.yaml
alone, with `--set` making training tiny: 3 tokenizer steps and 3 DiT steps at batch 16, one
worker process. The reference stage passes over the whole val split, the tokenizer stage over the
whole train split (its latent statistics) and the whole val split (its reconstruction
metrics), and encode over the train split twice (plain and mirrored): those passes are what
the data size tests.

Why 64 px on a CPU: at 256 px those passes cost the f4d8 encoder about 90 times as much per
image as at 64 px (measured on a 2-core CPU; about 2 images/s encoded there): hours for 20,000
images, so 256 px wants a GPU, or `--until reference` (validate, prepare and reference alone).
On 2 shared cores the default run took 23 minutes, --quick 11.

The table gives each stage's peak RSS at both sizes, the growth, and the growth as a share of
the growth of the prepared images on disk. A stage that reads a batch or a shard at a time
grows by a few MiB of per-image bookkeeping (labels, file lists); one that loads the split
grows by about the data (100 %) or more. `bounded` means growth <= 10 % of the data growth +
32 MiB (run-to-run noise); the script exits 1 otherwise. `--smoke` checks that the stages up
to reference (or --until) run and the table prints, in about a minute (a process per stage and
size); at its toy sizes the verdicts mean nothing and do not set the exit status.
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

import numpy as np
import yaml
from PIL import Image, ImageDraw

from ldm.progress import progress_bar
from ldm.stages.registry import STAGES

REPO = Path(__file__).resolve().parents[1]
CLASSES = 4
NOISE_MIB, MAX_SHARE = 32.0, 0.10
# glibc keeps freed heap blocks for reuse, and how many depends on the order of allocations: the
# peak of one tokenizer stage varied by +-100 MiB between identical runs. Blocks of 1 MiB and
# more (every batch-sized tensor) mapped on their own and returned when freed make the peak what
# the stage holds (spread about 25 MiB). Set MALLOC_MMAP_THRESHOLD_ yourself to override.
MMAP_THRESHOLD = 2**20
SMOKE_SIZES, SMOKE_RESOLUTION = (24, 48), 32


def first_variant(code: Path) -> tuple[str, dict]:
    """The first variant of `code`'s params.yaml: the one the per-variant stages run for."""
    variants = yaml.safe_load((code / "params.yaml").read_text())["variants"]
    name = next(iter(variants))
    return name, variants[name]


def first_seed(code: Path) -> list[int] | None:
    """The first of `code`'s trial.seeds, the one seed the per-variant stages run for; None for
    code from before seeds."""
    trial = yaml.safe_load((code / "params.yaml").read_text()).get("trial")
    return trial["seeds"][:1] if trial else None


def stage_args(stage: str, per_variant: bool, variant: str) -> list[str]:
    """The `ldm` command of one pipeline stage (a per-variant one for `variant`)."""
    command = [stage.replace("_", "-")]
    return [*command, "--variant", variant] if per_variant else command


def overrides(
    resolution: int, device: str, variant: tuple[str, dict], seeds: list[int] | None, smoke: bool
) -> list[str]:
    values = {
        "variants": json.dumps({variant[0]: variant[1]}),  # one variant: report reads them all
        "data.resolution": resolution,
        "data.workers": 1,  # one process: its peak RSS is the stage's
        "tokenizer.steps": 3,
        "tokenizer.batch_size": 16,
        "tokenizer.warmup_steps": 1,
        "tokenizer.eval_every": 3,
        "tokenizer.checkpoint_every": 3,
        "tokenizer.device": device,
        "evaluate.batch_size": 32,
        "diffusion.steps": 3,
        "diffusion.batch_size": 16,
        "diffusion.micro_batch_size": 16,
        "diffusion.warmup_steps": 1,
        "diffusion.checkpoint_every": 3,
        "diffusion.sample_every": 3,
        "diffusion.device": device,
        "evaluate.num_samples": 32,
        "sample.steps": 2,
        "sample.batch_size": 16,
        "diffusion.curve_samples": 16,
    }
    if seeds is not None:  # one seed: a per-variant command runs every seed it is not given
        values["trial.seeds"] = json.dumps(seeds)
    if smoke:  # the toy sizes pass validation, the splits span shards, batches are full at both
        values |= {"validate.min_images": 8, "validate.min_images_per_class": 2}
        values |= {"data.val_fraction": 0.25, "prepare.shard_size": 8, "evaluate.nearest_k": 3}
        values |= {"evaluate.batch_size": 4, "tokenizer.batch_size": 4}
        values |= {"diffusion.batch_size": 4, "diffusion.micro_batch_size": 4}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def write_images(raw: Path, count: int, side: int, seed: int) -> None:
    """`count` distinct JPEGs a little larger than `side`, in CLASSES folders."""
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (raw / f"class-{c}").mkdir(parents=True, exist_ok=True)
    with progress_bar(f"images ({count})", count) as advance:
        for i in range(count):
            w, h = (side + int(v) for v in rng.integers(0, side // 4 + 1, size=2))
            yy, xx = np.mgrid[0:h, 0:w] / side  # (h, w) each
            a, b = rng.normal(size=2)
            t = (a * xx + b * yy)[..., None]
            t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)  # (h, w, 1) in [0, 1]
            low, high = rng.integers(0, 256, size=(2, 3))
            pixels = low + t * (high - low) + rng.normal(0, 4, size=(h, w, 3))
            im = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(im)
            for _ in range(3):
                x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
                x1, y1 = x0 + int(rng.integers(4, w // 2)), y0 + int(rng.integers(4, h // 2))
                fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill)
            im.save(raw / f"class-{i % CLASSES}" / f"img-{i:06d}.jpg", quality=90)
            advance(1)


# Run with the measured code: its stages in order, once each is an `ldm` command and the
# `--set` values load into its config.
PIPELINE = """
import json, sys
from pathlib import Path
import typer
from ldm import config
from ldm.cli import app
from ldm.stages.registry import STAGES
config.load(Path("params.yaml"), json.loads(sys.argv[1]))
known = typer.main.get_command(app).commands
missing = [name for name in STAGES if name.replace("_", "-") not in known]
if missing:
    sys.exit(f"stages without an `ldm` command: {missing}")
print(json.dumps({name: stage.per_variant for name, stage in STAGES.items()}))
"""


def pipeline(args: argparse.Namespace) -> dict[str, bool]:
    """The measured code's stages (`ldm.stages.registry.STAGES`) in order: name -> per variant.
    Read before any image is written, from a child process with that code first on the path."""
    variant, seeds = first_variant(args.code), first_seed(args.code)
    sets = overrides(args.resolution, args.device, variant, seeds, args.smoke)
    child = subprocess.run(
        [sys.executable, "-c", PIPELINE, json.dumps(sets[1::2])],
        cwd=args.code,
        env=os.environ | {"PYTHONPATH": str(args.code)},
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise SystemExit(f"the stages of {args.code} cannot run as set here:\n{child.stderr}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def peak_rss_mib(args: list[str], project: Path, code: Path, log: Path) -> float:
    """Run `python -m ldm ARGS` in `project` with `code` first on the path; its peak RSS."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK")}
    env |= {"PYTHONPATH": str(code), "OMP_WAIT_POLICY": "PASSIVE", "DO_NOT_TRACK": "1"}
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "ldm", *args], cwd=project, env=env, stdout=out, stderr=out
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's rusage alone
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"`ldm {' '.join(args[:3])}` failed ({child.returncode}):\n{tail}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def folder_mib(folder: Path, pattern: str) -> float:
    files = folder.rglob(pattern) if folder.is_dir() else []
    return sum(p.stat().st_size for p in files) / 2**20


def measure(count: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Peak RSS (MiB) of every stage on a fresh project of `count` images; data sizes too."""
    project = work / f"images-{count}"
    (project / "data").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(args.code / name, project / name)
    write_images(project / "data" / "raw", count, args.resolution, seed=count)
    variant = first_variant(args.code)
    sets = overrides(args.resolution, args.device, variant, first_seed(args.code), args.smoke)
    peaks: dict[str, float] = {}
    for stage in args.stages:
        started = time.perf_counter()
        log = project / f"{stage}.log"
        command = [*stage_args(stage, args.stages[stage], variant[0]), *sets]
        peaks[stage] = peak_rss_mib(command, project, args.code, log)
        seconds = time.perf_counter() - started
        print(f"  {count:>7,} images  {stage:<16} {peaks[stage]:8.0f} MiB  ({seconds:.0f} s)")
    peaks["prepared images"] = folder_mib(project / "data" / "prepared", "images-*.npy")
    peaks["latents"] = folder_mib(project / "data" / "latents", "latents*.npy")
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000], metavar=("A", "B"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="tokenizer.device / diffusion.device")
    parser.add_argument("--quick", action="store_true", help="sizes 500 and 5,000")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="24 and 48 images at 32 px, until reference unless --until says; verdicts unchecked",
    )
    parser.add_argument(
        "--until", choices=list(STAGES), help="the last stage to run (default train_diffusion)"
    )
    parser.add_argument("--code", type=Path, default=REPO, help="the ldm checkout to measure")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the projects go")
    parser.add_argument("--keep", action="store_true", help="keep the projects (and logs)")
    args = parser.parse_args()
    if args.quick:
        args.sizes = [500, 5000]
    if args.smoke:
        args.sizes, args.resolution = list(SMOKE_SIZES), SMOKE_RESOLUTION
    args.until = args.until or ("reference" if args.smoke else "train_diffusion")
    args.code = args.code.resolve()
    stages = pipeline(args)
    if args.until not in stages:
        raise SystemExit(f"{args.code} has no stage {args.until!r}: {list(stages)}")
    names = list(stages)[: list(stages).index(args.until) + 1]
    args.stages = {name: stages[name] for name in names}
    work = Path(tempfile.mkdtemp(prefix="ldm-memory-", dir=args.work_dir))
    print(f"projects in {work}; {args.resolution} px, device {args.device}, code {args.code}")
    try:
        a, b = (measure(n, args, work) for n in args.sizes)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    data_growth = b["prepared images"] - a["prepared images"]
    na, nb = (f"{n:,} images" for n in args.sizes)
    print(f"\npeak RSS (MiB) at {args.resolution} px; growth as a share of the data's growth")
    print(f"{'stage':<24}{na:>15}{nb:>15}{'growth':>8}{'share':>8}  verdict")
    bounded = True
    for stage in args.stages:
        growth = b[stage] - a[stage]
        ok = growth <= MAX_SHARE * data_growth + NOISE_MIB
        bounded &= ok
        share = f"{100 * growth / data_growth:.0f} %" if data_growth >= 1 else "-"
        numbers = f"{a[stage]:>15.0f}{b[stage]:>15.0f}{growth:>+8.0f}{share:>8}"
        print(f"{stage:<24}{numbers}  {'bounded' if ok else 'GROWS WITH THE DATA'}")
    for row in ("prepared images", "latents"):
        print(f"{row + ' (disk)':<24}{a[row]:>15.0f}{b[row]:>15.0f}{b[row] - a[row]:>+8.0f}")
    if args.smoke:
        print("smoke run: toy sizes, so the verdicts above are not checked")
        return
    sys.exit(0 if bounded else 1)


if __name__ == "__main__":
    main()
