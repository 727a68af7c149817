"""Generators compared with each other: every variant's gFD and relative FD resampled in the
same draws, so that a difference carries only the noise that does not cancel.

One draw resamples the val and train rows once and gives them to every variant: the reference
is shared, so its noise drops out of a difference. The generated rows are resampled with the
same indices in every variant (row j of each set comes from the same noise and label: common
random numbers), and so are the untrained rows. With several training seeds per variant the
draw first picks that many seeds with replacement, per variant, then the rows, and the
variant's value is the mean over the seeds it picked: the spread of a difference then holds
both sources, retraining and sampling (the FID Lottery's point: the first is often larger).

KID's difference (`kid_by_subset`) is paired the same way over its random subsets; torchmetrics'
KID (the record's own number) draws its subsets for one pair of sets, so it cannot share them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ldm.errors import DataError
from ldm.metrics.bootstrap import Estimate, Resampling, resample, single_threaded_blas, summarise
from ldm.metrics.frechet import ResampledFrechet, as_features, frechet_distance_between
from ldm.records import relative_fd


@dataclass(frozen=True)
class Replicate:
    """One trained generator's rows: what one training seed of a variant produced."""

    generated: np.ndarray  # (N, D); row j from the j-th fixed noise and label, in every variant
    untrained: np.ndarray  # decoded N(0, I) latents: its ceiling's rows
    # its tokenizer's reconstructions of the val images, row i of val image i: rFD gaps pair
    # on these rows; None for evaluations from before they were kept
    reconstructed: np.ndarray | None = None


@dataclass(frozen=True)
class VariantDraws:
    """A variant's gFD and relative FD: points (means over seeds) and every draw's value."""

    gfd: float
    relative_fd: float
    seed_gfds: tuple[float, ...]  # each seed's own gFD: their spread is the retraining noise
    gfd_draws: np.ndarray  # (draws,)
    relative_draws: np.ndarray


def check_paired(variants: dict[str, Sequence[Replicate]]) -> None:
    """Every replicate of every variant has as many generated (and untrained) rows: the
    common random numbers pair row j with row j."""
    if not variants or any(not reps for reps in variants.values()):
        raise ValueError("every variant needs at least one replicate")
    shapes = {(r.generated.shape, r.untrained.shape) for reps in variants.values() for r in reps}
    if len(shapes) != 1:
        raise DataError(
            f"the variants' feature sets differ in shape {sorted(shapes)}: a paired comparison "
            "needs the same evaluate.num_samples for every variant and seed"
        )


def joint_draws(
    val: np.ndarray,
    train: np.ndarray,
    variants: dict[str, Sequence[Replicate]],
    resampling: Resampling,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, VariantDraws]:
    """Every variant's gFD and relative FD in each of `resampling.draws` shared draws;
    `progress(1)` after each draw."""
    check_paired(variants)
    val, train = as_features(val), as_features(train)
    floor_fd = ResampledFrechet(val, train)
    gen_fd = {n: [ResampledFrechet(val, r.generated) for r in reps] for n, reps in variants.items()}
    untrained_fd = {
        n: [ResampledFrechet(val, r.untrained) for r in reps] for n, reps in variants.items()
    }
    first = next(iter(variants.values()))[0]
    n_gen, n_untrained = len(first.generated), len(first.untrained)
    rng = np.random.default_rng(resampling.seed)
    gfds = {name: np.empty(resampling.draws) for name in variants}
    relatives = {name: np.empty(resampling.draws) for name in variants}
    with single_threaded_blas():
        for i in range(resampling.draws):
            rows_val, rows_train = resample(rng, len(val)), resample(rng, len(train))
            rows_gen, rows_untrained = resample(rng, n_gen), resample(rng, n_untrained)
            floor = floor_fd(rows_val, rows_train)
            for name, reps in variants.items():
                # one seed: no choice to resample; several: a bootstrap of the seeds first
                picked = [0] if len(reps) == 1 else resample(rng, len(reps))
                values = {}
                for s in set(int(s) for s in picked):
                    fd = gen_fd[name][s](rows_val, rows_gen)
                    ceiling = untrained_fd[name][s](rows_val, rows_untrained)
                    values[s] = (fd, relative_fd(fd, floor, ceiling))
                gfds[name][i] = np.mean([values[int(s)][0] for s in picked])
                relatives[name][i] = np.mean([values[int(s)][1] for s in picked])
            progress(1)
    floor = frechet_distance_between(val, train)
    out = {}
    for name, reps in variants.items():
        seed_gfds = [frechet_distance_between(val, r.generated) for r in reps]
        ceilings = [frechet_distance_between(val, r.untrained) for r in reps]
        relative = [relative_fd(f, floor, c) for f, c in zip(seed_gfds, ceilings, strict=True)]
        out[name] = VariantDraws(
            gfd=float(np.mean(seed_gfds)),
            relative_fd=float(np.mean(relative)),
            seed_gfds=tuple(seed_gfds),
            gfd_draws=gfds[name],
            relative_draws=relatives[name],
        )
    return out


def difference(a: VariantDraws, b: VariantDraws, number: str, level: float) -> Estimate | None:
    """a - b of `number` ("gfd" or "relative_fd") with its paired interval; None when fewer
    than 2 draws are finite (a relative FD whose ceiling met its floor)."""
    point = getattr(a, number) - getattr(b, number)
    draws_of = "gfd_draws" if number == "gfd" else "relative_draws"
    values = getattr(a, draws_of) - getattr(b, draws_of)
    finite = values[np.isfinite(values)]
    if not np.isfinite(point) or len(finite) < 2:
        return None
    return summarise(point, finite, level)


def polynomial_mmd2(real: np.ndarray, fake: np.ndarray) -> float:
    """The unbiased squared MMD under KID's kernel (xᵀy / D + 1)³ (Bińkowski et al. 2018)."""
    real, fake = as_features(real), as_features(fake)
    dims, m = real.shape[1], len(real)
    k_rr = (real @ real.T / dims + 1.0) ** 3
    k_ff = (fake @ fake.T / dims + 1.0) ** 3
    k_rf = (real @ fake.T / dims + 1.0) ** 3
    within = (k_rr.sum() - np.trace(k_rr) + k_ff.sum() - np.trace(k_ff)) / (m * (m - 1))
    return float(within - 2.0 * k_rf.mean())


def kid_by_subset(
    val: np.ndarray,
    variants: dict[str, Sequence[Replicate]],
    subsets: int,
    subset_size: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Each variant's KID on the same `subsets` random subsets: the same val rows and the same
    generated row indices for every variant (without replacement, as KID draws them), averaged
    over its seeds. A difference of two variants' arrays is a paired KID difference: its mean
    and standard deviation over subsets are KID's own estimate and spread."""
    check_paired(variants)
    val = as_features(val)
    n_gen = len(next(iter(variants.values()))[0].generated)
    size = min(subset_size, len(val), n_gen)
    if size < 2:
        raise ValueError(f"a KID subset needs 2 or more rows, got {size}")
    rng = np.random.default_rng(seed)
    out = {name: np.empty(subsets) for name in variants}
    for i in range(subsets):
        real = val[rng.choice(len(val), size=size, replace=False)]
        rows = rng.choice(n_gen, size=size, replace=False)
        for name, reps in variants.items():
            out[name][i] = np.mean([polynomial_mmd2(real, r.generated[rows]) for r in reps])
    return out


@dataclass(frozen=True)
class ReconstructionDraws:
    """A variant's rFD (its reconstructions against the val rows): the point (mean over
    seeds), each seed's own, and every shared draw's value."""

    rfd: float
    seed_rfds: tuple[float, ...]
    draws: np.ndarray  # (draws,)


def reconstruction_draws(
    val: np.ndarray,
    variants: dict[str, Sequence[np.ndarray]],
    resampling: Resampling,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, ReconstructionDraws]:
    """Every variant's rFD in each of `resampling.draws` shared draws. Row i of every
    reconstruction set is val image i decoded by that variant's tokenizer, so one draw picks
    one set of image indices for the val rows and every variant's reconstructions alike: the
    same images in both terms of a difference. Seeds are resampled first, as in `joint_draws`;
    `progress(1)` after each draw."""
    val = as_features(val)
    sizes = {len(rows) for reps in variants.values() for rows in reps}
    if sizes != {len(val)}:
        raise DataError(
            f"reconstruction rows {sorted(sizes)} do not match the {len(val)} val rows: run "
            "`ldm evaluate` again for every cell"
        )
    fds = {n: [ResampledFrechet(val, as_features(r)) for r in reps] for n, reps in variants.items()}
    rng = np.random.default_rng(resampling.seed)
    out = {name: np.empty(resampling.draws) for name in variants}
    with single_threaded_blas():
        for i in range(resampling.draws):
            rows = resample(rng, len(val))
            for name, reps in fds.items():
                picked = [0] if len(reps) == 1 else resample(rng, len(reps))
                values = {int(s): reps[int(s)](rows, rows) for s in set(int(s) for s in picked)}
                out[name][i] = np.mean([values[int(s)] for s in picked])
            progress(1)
    found = {}
    for name, reps in variants.items():
        seed_rfds = tuple(frechet_distance_between(val, r) for r in reps)
        found[name] = ReconstructionDraws(float(np.mean(seed_rfds)), seed_rfds, out[name])
    return found
