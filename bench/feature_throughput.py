"""Throughput of the evaluation feature network on the CPU: whole batches against micro-batches.

    python bench/feature_throughput.py                 # effnet_lite2, 128 images of 32 px,
                                                       # batches of 128 vs micro-batches 2..32
    python bench/feature_throughput.py --images 256 --size 64
    python bench/feature_throughput.py --smoke         # 8 images, one repeat: the wiring in
                                                       # seconds (the test suite runs it)

Every evaluation pass hands the network a whole batch (`evaluate.batch_size`, 128 by default).
At 260 px a batch of 128 has gigabyte activations, allocated afresh for every layer; the
micro-batches `FeatureNet` cuts on a CPU (`CPU_MICRO_BATCH`) keep them small. The baseline is
the same network given the whole batch at once, in the same run. Target: the micro-batches at
least 1.2x the whole batch's images/s, with the same features.
"""

from __future__ import annotations

import argparse
import os

import torch
from validate_throughput import median_seconds  # bench/'s own timer, a sibling script

from ldm.pretrained import base
from ldm.pretrained.features import load_eval_features

REPEATS = 3  # timed runs of each setting; the median is reported
SPEEDUP_TARGET = 1.2


def features(net: torch.nn.Module, images: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """The net's features of `images` with `CPU_MICRO_BATCH` set to `micro_batch`."""
    kept = base.CPU_MICRO_BATCH
    base.CPU_MICRO_BATCH = micro_batch
    try:
        with torch.inference_mode():
            return net(images)
    finally:
        base.CPU_MICRO_BATCH = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="effnet_lite2", help="a packaged evaluate.features")
    parser.add_argument("--images", type=int, default=128, help="one batch, as evaluate gives")
    parser.add_argument("--size", type=int, default=32, help="the images' side before resizing")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, in seconds")
    args = parser.parse_args()
    repeats = 1 if args.smoke else REPEATS
    sizes = (2, 8) if args.smoke else (2, 4, 8, 16, 32)
    if args.smoke:
        args.images = 8
    net = load_eval_features(args.net)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size, generator=generator) * 2 - 1
    features(net, images[:2], 2)  # first-call setup out of the timings
    print(
        f"{args.net}: {args.images} images of {args.size} px in one batch, "
        f"median of {repeats}, {torch.get_num_threads()} threads on {os.cpu_count()} CPUs"
    )
    whole_seconds, whole = median_seconds(features, net, images, args.images, repeats=repeats)
    whole_rate = args.images / whole_seconds
    print(f"whole batch    {args.images:4d}: {whole_rate:7.1f} img/s")
    best = (whole_rate, args.images)
    for micro in sizes:
        seconds, found = median_seconds(features, net, images, micro, repeats=repeats)
        rate = args.images / seconds
        gap = (found - whole).abs().max().item()
        print(
            f"micro-batches {micro:4d}: {rate:7.1f} img/s  {rate / whole_rate:5.2f}x  "
            f"max |features - whole batch's| {gap:.1e}"
        )
        best = max(best, (rate, micro))
    chosen_seconds, _ = median_seconds(features, net, images, base.CPU_MICRO_BATCH, repeats=repeats)
    chosen = args.images / chosen_seconds / whole_rate
    print(
        f"summary: CPU_MICRO_BATCH={base.CPU_MICRO_BATCH} gives {chosen:.2f}x the whole "
        f"batch's img/s (target {SPEEDUP_TARGET}x); fastest here: {best[1]} "
        f"({best[0] / whole_rate:.2f}x)"
    )


if __name__ == "__main__":
    main()
