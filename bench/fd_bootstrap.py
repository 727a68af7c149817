"""Frechet distance from the rows (an N1 × N2 SVD) against the covariance route, and the time of
a bootstrap of one generator's FD and of a paired difference.

    python bench/fd_bootstrap.py                      # 256 generated vs 136 real rows, D = 1,280,
                                                      # 1,000 draws: the default trial's shapes
    python bench/fd_bootstrap.py --draws 200 --dim 2048
    python bench/fd_bootstrap.py --smoke              # toy sizes, in seconds (the tests run it)

The features are post-ReLU look-alikes: a low-rank signal plus noise, clipped at 0. The
covariance route, `frechet_distance(*feature_stats(...))`, takes two D × D
eigendecompositions; the rows route (`frechet_distance_between`, N < D) one SVD of N1 × N2.
Targets at the default sizes: the rows route ≥ 50x faster, 1,000 bootstrap draws ≤ 5 s.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from validate_throughput import median_seconds  # bench/'s own timer, a sibling script

from ldm.metrics.bootstrap import Resampling, bootstrap_fd, paired_fd_difference
from ldm.metrics.frechet import feature_stats, frechet_distance, frechet_distance_between

REPEATS = 3  # timed runs of each FD; the median is reported
SPEEDUP_TARGET = 50.0
DRAWS_SECONDS_TARGET = 5.0  # for 1,000 draws


def pooled_features(
    rng: np.random.Generator, n: int, basis: np.ndarray, shift: float
) -> np.ndarray:
    """n rows of a low-rank signal plus noise, clipped at 0 (pooled post-ReLU features)."""
    signal = rng.normal(size=(n, len(basis))) @ basis
    return np.maximum(signal + 0.5 * rng.normal(size=(n, basis.shape[1])) + shift, 0.0)


def covariance_route(real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=int, default=136, help="real rows (the val split)")
    parser.add_argument("--fake", type=int, default=256, help="generated rows")
    parser.add_argument("--dim", type=int, default=1280, help="feature width D")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="toy sizes, in seconds")
    args = parser.parse_args()
    repeats = 1 if args.smoke else REPEATS
    if args.smoke:
        args.real, args.fake, args.dim, args.draws = 12, 20, 48, 20
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(32, args.dim)) / np.sqrt(32)
    real = pooled_features(rng, args.real, basis, 0.0)
    fake_a = pooled_features(rng, args.fake, basis, 0.05)
    fake_b = pooled_features(rng, args.fake, basis, 0.10)
    print(f"{args.fake} generated vs {args.real} real rows, D = {args.dim}, median of {repeats}")

    t_cov, fd_cov = median_seconds(covariance_route, real, fake_a, repeats=repeats)
    t_rows, fd_rows = median_seconds(frechet_distance_between, real, fake_a, repeats=repeats)
    speedup = t_cov / t_rows
    print(f"covariance  frechet_distance(*feature_stats): {t_cov * 1e3:9.2f} ms  FD {fd_cov:.6f}")
    print(f"rows        frechet_distance_between:         {t_rows * 1e3:9.2f} ms  FD {fd_rows:.6f}")
    print(f"            |rows - covariance| / FD = {abs(fd_rows - fd_cov) / fd_cov:.1e}")

    start = time.perf_counter()
    est = bootstrap_fd(real, fake_a, Resampling(args.draws, 0.9, 0))
    t_boot = time.perf_counter() - start
    start = time.perf_counter()
    diff = paired_fd_difference(real, fake_a, fake_b, Resampling(args.draws, 0.9, 0))
    t_pair = time.perf_counter() - start
    for name, seconds, e in (
        ("bootstrap_fd FD(a)", t_boot, est),
        ("paired_fd_difference FD(a) - FD(b)", t_pair, diff),
    ):
        print(
            f"{name}, {args.draws} draws: {seconds:.2f} s ({args.draws / seconds:.0f} draws/s); "
            f"{e.point:.2f}, se {e.se:.2f}, 90% [{e.lo:.2f}, {e.hi:.2f}]"
        )
    per_1000 = t_boot / args.draws * 1000
    print(
        f"summary: rows route {speedup:.0f}x the covariance route "
        f"(target >= {SPEEDUP_TARGET:.0f}x: {met(speedup >= SPEEDUP_TARGET)}); "
        f"1,000 bootstrap draws {per_1000:.2f} s "
        f"(target <= {DRAWS_SECONDS_TARGET:.0f} s: {met(per_1000 <= DRAWS_SECONDS_TARGET)}) "
        f"on {os.cpu_count()} CPUs"
        + (" (toy sizes: the targets are for the defaults)" * args.smoke)
    )


if __name__ == "__main__":
    main()
