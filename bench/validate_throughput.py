"""Throughput of `ldm validate`'s scan against a plain single-process Pillow decode loop.

    python bench/validate_throughput.py --images 600 --size 256 --workers 0
    python bench/validate_throughput.py --smoke   # 8 images of 64 px, 2 workers, one repeat:
                                                  # the wiring in seconds (the test suite runs it)

The scan does more per file than the baseline: it hashes the bytes (sha256), decodes through the
shared `open_image` + `to_rgb` path, applies the policy and marks duplicates. The ratio shows what
the worker processes buy back.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ldm.config import ValidateConfig
from ldm.data.validate import scan

REPEATS = 3  # timed runs of each loop; the median is reported


def write_images(folder: Path, n: int, size: int) -> list[Path]:
    """n distinct noise-plus-gradient JPEGs (noise alone would make unrealistically big files)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    paths = []
    for i in range(n):
        base = (ramp[None, :, None] + ramp[:, None, None] * (i % 7) / 7) % 256
        pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"class{i % 4}" / f"{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def baseline(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(path) as im:
            im.convert("RGB").load()


def median_seconds(fn, *args, repeats: int = REPEATS):
    """(median wall time over `repeats` runs, the last run's return value)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per CPU core (default)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, in seconds")
    args = parser.parse_args()
    repeats = 1 if args.smoke else REPEATS
    if args.smoke:
        args.images, args.size, args.workers = 8, 64, 2
    workers = args.workers or os.cpu_count() or 1
    cfg = ValidateConfig(
        min_side=32, max_pixels=50_000_000, min_images=1,
        min_accepted_fraction=0.0, min_images_per_class=1,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_images(root, args.images, args.size)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{args.images} JPEGs {args.size}x{args.size} ({mb:.1f} MB), median of {repeats}")
        t_base, _ = median_seconds(baseline, paths, repeats=repeats)
        t_one, _ = median_seconds(scan, root, cfg, 1, repeats=repeats)
        t_scan, files = median_seconds(scan, root, cfg, workers, repeats=repeats)
        n_ok = files["status"].eq("accepted").sum()
    base_rate, scan_rate = args.images / t_base, args.images / t_scan
    print(f"baseline  Image.open().convert('RGB'), 1 process: {base_rate:8.1f} images/s")
    print(f"scan      hash + decode + policy, 1 process:    {args.images / t_one:8.1f} images/s")
    print(f"scan      hash + decode + policy, {workers} workers:    {scan_rate:8.1f} images/s")
    print(f"          ({n_ok}/{args.images} accepted; scan time includes starting the workers)")
    print(
        f"summary: scan {scan_rate:.0f} img/s vs baseline {base_rate:.0f} img/s = "
        f"{scan_rate / base_rate:.2f}x with {workers} workers on {os.cpu_count()} CPUs "
        f"(scan also hashes, applies EXIF/alpha handling and checks the policy)"
    )


if __name__ == "__main__":
    main()
