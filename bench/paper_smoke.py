"""A few hundred steps of the `paper` preset end to end on synthetic images (GPU check, part 4).

In a temporary project: synthetic 256 px images of 4 classes are written as a prepared split
(the shard layout of `ldm.data.prepare`), then the stages reference, train_tokenizer, encode
and train_diffusion run for the aligned f16d32 variant (its first seed's cell) as `ldm` runs
them, each metered by `ldm.cost` (GPU-hours, and energy where NVML reads it). What is not the
paper's, and why:
- align.foundation is effnet_lite0: the DINOv2 weights are not on the GPU host;
- steps and batches are small so that the part fits its minutes;
- validate and MLflow are left out (great-expectations, polars and mlflow are not on the host):
  the stage functions run with a NullTracker.

    python bench/paper_smoke.py            # on a GPU host: prints one row per stage
    python bench/paper_smoke.py --smoke    # toy sizes on the CPU, "dry" for the numbers
                                           # (--dry-run is the same flag)

The test suite runs the smoke as part 4 of `bench/gpu_check.sh --dry-run`, which calls `main`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = 4


def paper_preset(prefix: str = "") -> list[str]:
    """presets/paper.yaml (with the presets it extends) as --set overrides, those under `prefix`."""
    from ldm.params_file import preset_values

    values = preset_values(REPO / "presets", "paper")
    return [f"{k}={json.dumps(v)}" for k, v in values.items() if k.startswith(prefix)]


def synthetic_images(n: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth class-coloured fields with a bright disc: (n, side, side, 3) uint8, labels (n,)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
    x, y = np.meshgrid(ramp, ramp)
    palette = rng.uniform(40, 215, (CLASSES, 3)).astype(np.float32)
    out = np.empty((n, side, side, 3), np.uint8)
    for i, label in enumerate(labels):
        cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.08, 0.25)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < r**2).astype(np.float32)  # (side, side)
        tilt = rng.uniform(-40, 40, 2)
        base = palette[label] + (tilt[0] * x + tilt[1] * y)[..., None]  # (side, side, 3)
        out[i] = np.clip(base + 60 * disc[..., None], 0, 255).astype(np.uint8)
    return out, labels


def write_prepared(folder: Path, n: int, side: int, val_fraction: float) -> None:
    """The images as `ldm prepare` leaves them (its own shard writer and meta)."""
    from ldm.data import prepare as prep

    images, labels = synthetic_images(n, side, 0)
    rows = [
        {"path": f"synthetic/{i:05d}.png", "class": f"class{label}"}
        | {"sha256": hashlib.sha256(images[i].tobytes()).hexdigest()}
        for i, label in enumerate(labels)
    ]
    splits = [prep.split_of(r["sha256"], val_fraction) for r in rows]
    class_map = {f"class{c}": c for c in range(CLASSES)}
    totals = {s: splits.count(s) for s in prep.SPLITS}
    writers = {s: prep._SplitWriter(folder / s, totals[s], n) for s in prep.SPLITS}
    for image, row, split in zip(images, rows, splits, strict=True):
        writers[split].add(image, row, class_map[row["class"]])
    for writer in writers.values():
        writer.close()
    meta = prep._meta(rows, splits, writers, class_map, side, val_fraction, n)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def settings(dry: bool) -> list[str]:
    """Overrides on top of the paper preset: small steps and batches, the offline foundation."""
    aligned = {"preset": "f4d8" if dry else "f16d32", "align": True}
    sets = {
        "variants": {"aligned": aligned},
        "align.foundation": "effnet_lite0",
        "align.foundation_weights": None,
        "tokenizer.steps": 2 if dry else 100,
        "tokenizer.batch_size": 4 if dry else 32,
        "tokenizer.disc_start": 1 if dry else 50,  # the PatchGAN's half of the run too
        "tokenizer.eval_every": 50,
        "tokenizer.checkpoint_every": 100,
        "diffusion.model": "T/2" if dry else "B/1",
        "diffusion.steps": 2 if dry else 200,
        "diffusion.batch_size": 8 if dry else 128,
        "diffusion.micro_batch_size": 8 if dry else 128,
        "diffusion.checkpoint_every": 200,
        "diffusion.sample_every": 200,
        "diffusion.curve_samples": 16,
        "sample.steps": 4 if dry else 25,
        "sample.batch_size": 16,
        "evaluate.batch_size": 16 if dry else 64,
    }
    if dry:
        sets |= {"data.resolution": 32, "validate.min_side": 32}
        sets |= {f"{s}.{k}": v for s in ("tokenizer", "diffusion") for k, v in CPU.items()}
    return [f"{k}={json.dumps(v)}" for k, v in sets.items()]


CPU = {"device": "cpu", "precision": "fp32", "compile": False}


def smoke(dry: bool, preset: list[str]) -> list[tuple[str, str, str]]:
    """Run the three stages in a temporary project; one table row each."""
    from ldm import config
    from ldm.cost import CostMeter, device_of_this_process
    from ldm.paths import Paths
    from ldm.stages.encode import encode
    from ldm.stages.reference import reference
    from ldm.stages.train_diffusion import train_diffusion
    from ldm.stages.train_tokenizer import train_tokenizer
    from ldm.tracker import NullTracker

    rows = []
    with tempfile.TemporaryDirectory(prefix="paper-smoke-") as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        cfg = config.load(root / "params.yaml", [*preset, *settings(dry)])
        paths = Paths(root)
        n = 48 if dry else 512
        write_prepared(paths.prepared, n, cfg.data.resolution, cfg.data.val_fraction)
        with CostMeter(cfg.cost) as meter:
            result = reference(cfg, paths, NullTracker())
        metrics = result.metrics | meter.metrics(device_of_this_process())
        rows.append(row("reference", metrics, cfg, dry))
        cell = cfg.cells()[0]  # the aligned variant, trained with the first of trial.seeds
        for name, stage in (
            ("train_tokenizer", train_tokenizer),
            ("encode", encode),
            ("train_diffusion", train_diffusion),
        ):
            with CostMeter(cfg.cost) as meter:
                result = stage(cfg, paths, NullTracker(), cell)
            metrics = result.metrics | meter.metrics(device_of_this_process())
            rows.append(row(f"{name}@{cell}", metrics, cfg, dry))
    return rows


def row(stage: str, metrics: dict, cfg, dry: bool) -> tuple[str, str, str]:  # noqa: ANN001
    """What the table shows of one stage run (`train_tokenizer@aligned-0`)."""
    steps = {"train_tokenizer": cfg.tokenizer.steps, "train_diffusion": cfg.diffusion.steps}
    what = f"paper preset {stage}"
    stage = stage.partition("@")[0]
    what += f", {steps[stage]} steps" if stage in steps else ""
    if stage == "train_tokenizer":
        what += f", batch {cfg.tokenizer.batch_size}, effnet_lite0 alignment (no DINOv2 here)"
        shown = f"PSNR {metrics['psnr']:.1f} dB, final loss {metrics['train/final_loss']:.3f}"
    elif stage == "train_diffusion":
        what += f", {cfg.diffusion.model}, batch {cfg.diffusion.batch_size}"
        shown = f"final loss {metrics['train/final_loss']:.3f}"
    elif stage == "reference":
        what += f", {cfg.evaluate.features} features of the real images"
        shown = f"fd_train_val {metrics['fd_train_val']:.1f}"
    else:
        shown = "latents written"
    energy = metrics.get("cost/energy_kwh")
    cost = f"{metrics['cost/wall_seconds']:.0f} s wall, {metrics['cost/gpu_hours']:.4f} GPU-h, "
    cost += "energy not measured" if energy is None else f"{1000 * energy:.2f} Wh"
    return what, "dry" if dry else shown, cost


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Run the stages, print their table; the rows (gpu_check.py's part 4 calls this)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", "--dry-run", dest="smoke", action="store_true", help="toy sizes on the CPU"
    )
    args = parser.parse_args(argv)
    rows = smoke(args.smoke, paper_preset())
    titles = ("stage", "result", "cost")
    widths = [max(len(r[i]) for r in [titles, *rows]) for i in range(3)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    for cells in [titles, tuple("-" * w for w in widths), *rows]:
        print(line.format(*cells).rstrip())
    return rows


if __name__ == "__main__":
    main()
