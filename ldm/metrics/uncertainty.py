"""Uncertainty of an evaluation's numbers: bootstrap intervals, KID, and FD extrapolated to N → ∞.

- `generation_estimates`: every generation metric of one evaluation (gFD, its floor and ceiling,
  the relative FD, precision, recall, density, coverage) with a bootstrap se and interval
  (`ldm.metrics.bootstrap.summarise`: the bias-shifted percentile interval). One draw resamples
  the val rows once and uses them in all three FDs and in PRDC, so the reference's noise is
  shared as the reference lines share the val set; generated, train and untrained rows are
  resampled independently, with replacement.
- `kid`: the kernel inception distance of Bińkowski et al. (2018), unbiased at any N.
- `fd_infinity`: the FD extrapolated to infinitely many generated rows (Chong & Forsyth 2020).
- `mean_fd_of_subsets`: the FD as it reads at fewer rows, to compare with an FD of that many.

PRDC under resampling. A resample repeats rows, and a repeated row is at distance 0 from its
copy: taken naively it would be its own k-th neighbour and its ball would have radius 0. So each
draw takes its k-NN radii from the DISTINCT rows it drew (a ball reaches the k-th nearest other
distinct row, the row itself not counted, `<` for inside, as `prdc` does), while precision,
recall, density and coverage average over the draw's rows with their multiplicities: a generated
row drawn twice counts twice in precision's and density's averages, a val row drawn twice counts
twice in recall's and coverage's and is two balls in density's count. With every row drawn once
this is exactly `prdc`. A draw's radii come from about 63 % of the rows, so they are longer than
the full set's and precision, recall and density come out higher in the draws than at the point
(density most: at 136 / 256 rows, k = 5, by about 0.4); the bias-shifted interval recentres that
spread on the point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ldm.errors import DataError
from ldm.metrics.bootstrap import (
    Estimate,
    Resampling,
    resample,
    single_threaded_blas,
    summarise,
)
from ldm.metrics.frechet import (
    ResampledFrechet,
    as_features,
    distinct_with_counts,
    frechet_distance_between,
)
from ldm.metrics.manifold import precision_recall_density_coverage
from ldm.records import relative_fd

if TYPE_CHECKING:
    import torch

PRDC_NAMES = ("precision", "recall", "density", "coverage")
FD_NAMES = ("fd", "fd_train_val", "fd_random_latents", "relative_fd")
# The values each metric can take. The bias shift can move an interval's end past them (a
# coverage of 0.99 whose draws run to 1 shifted up by 0.004); such an end is cut back.
RANGES = {
    "fd": (0.0, np.inf),
    "fd_train_val": (0.0, np.inf),
    "fd_random_latents": (0.0, np.inf),
    "relative_fd": (-np.inf, np.inf),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "density": (0.0, np.inf),
    "coverage": (0.0, 1.0),
}
# Chong & Forsyth's FD∞: the generated set cut to these shares of its size (the real set stays
# whole), fitted linearly in 1/N.
FD_INFINITY_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
KID_SUBSETS = 100  # random subset pairs behind KID's mean and spread (Bińkowski et al.)


def kth_neighbour_radii(distances: np.ndarray, nearest_k: int) -> np.ndarray:
    """Each row's (k + 1)-th smallest distance in a square matrix of one set's distinct rows.

    The smallest is the row's distance to itself, so this is the k-th neighbour's, as `prdc`
    takes it (the same order statistic of the same matrix: the same number).
    """
    # np.partition rather than prdc's get_kth_value, which needs k + 2 rows: a resample may hold
    # only k + 1 distinct ones.
    return np.partition(distances, nearest_k, axis=1)[:, nearest_k]


class ResampledPrdc:
    """Precision, recall, density and coverage of resamples of two fixed (N, D) row sets.

    The three distance matrices (real-real, fake-fake, real-fake) are computed once by `prdc`'s
    own function; a draw indexes them. `prdc(rows_real, rows_fake)` takes row indices with
    repeats; radii come from the distinct rows, averages count the repeats (module docstring).
    """

    def __init__(
        self, real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, nearest_k: int
    ) -> None:
        from prdc.prdc import compute_pairwise_distance

        real, fake = as_features(real), as_features(fake)
        if real.shape[1] != fake.shape[1]:
            raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
        if nearest_k < 1:
            raise ValueError(f"nearest_k must be at least 1, got {nearest_k}")
        self.nearest_k = nearest_k
        self.n_real, self.n_fake = len(real), len(fake)
        self.real_real = compute_pairwise_distance(real)
        self.fake_fake = compute_pairwise_distance(fake)
        self.real_fake = compute_pairwise_distance(real, fake)

    def radii(self, distinct: np.ndarray, of_real: bool) -> np.ndarray:
        """k-NN radii of distinct row indices, each ball among those rows only."""
        if len(distinct) <= self.nearest_k:
            raise DataError(
                f"a resample holds {len(distinct)} distinct rows, too few for nearest_k="
                f"{self.nearest_k}; lower evaluate.nearest_k or raise evaluate.num_samples"
            )
        square = self.real_real if of_real else self.fake_fake
        return kth_neighbour_radii(square[np.ix_(distinct, distinct)], self.nearest_k)

    def __call__(self, rows_real: np.ndarray, rows_fake: np.ndarray) -> dict[str, float]:
        real, w_real = distinct_with_counts(rows_real, self.n_real)
        fake, w_fake = distinct_with_counts(rows_fake, self.n_fake)
        n_real, n_fake = w_real.sum(), w_fake.sum()
        r_real, r_fake = self.radii(real, of_real=True), self.radii(fake, of_real=False)
        d = self.real_fake[np.ix_(real, fake)]  # (distinct real, distinct fake)
        in_real = d < r_real[:, None]  # fake j inside real ball i
        # each average is a weighted count over n, in prdc's order of operations, so that
        # weights of 1 reproduce prdc's floats bit for bit
        return {
            "precision": float(w_fake @ in_real.any(axis=0) / n_fake),
            "recall": float(w_real @ (d < r_fake[None, :]).any(axis=1) / n_real),
            "density": float((1.0 / self.nearest_k) * ((w_real @ in_real) @ w_fake / n_fake)),
            "coverage": float(w_real @ (d.min(axis=1) < r_real) / n_real),
        }


def point_estimates(
    val: np.ndarray,
    generated: np.ndarray,
    train: np.ndarray,
    untrained: np.ndarray,
    nearest_k: int,
) -> dict[str, float]:
    """The metrics on the full sets, by the functions the evaluation itself uses."""
    return {
        **fd_numbers(
            frechet_distance_between(val, generated),
            frechet_distance_between(val, train),
            frechet_distance_between(val, untrained),
        ),
        **precision_recall_density_coverage(val, generated, nearest_k),
    }


def fd_numbers(fd: float, floor: float, ceiling: float) -> dict[str, float]:
    """gFD, its two reference lines, and the relative FD from those three (in a draw: the
    ratio's own spread, not a ratio of spreads)."""
    return {
        "fd": fd,
        "fd_train_val": floor,
        "fd_random_latents": ceiling,
        "relative_fd": relative_fd(fd, floor, ceiling),
    }


def resampled_draws(
    val: np.ndarray,
    generated: np.ndarray,
    train: np.ndarray,
    untrained: np.ndarray,
    nearest_k: int,
    resampling: Resampling,
    progress: Callable[[int], None],
) -> dict[str, np.ndarray]:
    """Every metric in every draw; one draw's val rows serve all its FDs and its PRDC.
    `progress(1)` after each draw."""
    fd_gen = ResampledFrechet(val, generated)
    fd_train = ResampledFrechet(val, train)
    fd_untrained = ResampledFrechet(val, untrained)
    prdc = ResampledPrdc(val, generated, nearest_k)
    rng = np.random.default_rng(resampling.seed)

    def enough(n: int) -> np.ndarray:
        """A resample of range(n) with more than nearest_k distinct rows, which k-NN radii
        need: drawn again otherwise (only ever at toy sizes; the full sets have k + 2 rows)."""
        while len(np.unique(rows := resample(rng, n))) <= nearest_k:
            pass
        return rows

    def draw() -> dict[str, float]:
        rows_val, rows_gen = enough(len(val)), enough(len(generated))
        rows_train, rows_untrained = resample(rng, len(train)), resample(rng, len(untrained))
        return {
            **fd_numbers(
                fd_gen(rows_val, rows_gen),
                fd_train(rows_val, rows_train),
                fd_untrained(rows_val, rows_untrained),
            ),
            **prdc(rows_val, rows_gen),
        }

    rows = []
    with single_threaded_blas():
        for _ in range(resampling.draws):
            rows.append(draw())
            progress(1)
    return {name: np.array([row[name] for row in rows]) for name in FD_NAMES + PRDC_NAMES}


def generation_estimates(
    val: torch.Tensor | np.ndarray,
    generated: torch.Tensor | np.ndarray,
    train: torch.Tensor | np.ndarray,
    untrained: torch.Tensor | np.ndarray,
    nearest_k: int,
    resampling: Resampling,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Estimate]:
    """Each generation metric with its bootstrap se and bias-shifted interval; `progress(1)`
    after each of the `resampling.draws` draws.

    Keys: "fd" (val vs generated), "fd_train_val" (val vs train: the floor),
    "fd_random_latents" (val vs untrained: the ceiling), "relative_fd" ((fd - floor) /
    (ceiling - floor), per draw from that draw's three FDs), and "precision", "recall",
    "density", "coverage" of generated against val. Each point is what the evaluation's own
    functions give on the full sets. An interval's end that the bias shift moved past the
    metric's range (e.g. a coverage above 1) is cut back to it (`RANGES`). A number with an
    undefined point or fewer than 2 finite draws is left out.
    """
    val, generated = as_features(val), as_features(generated)
    train, untrained = as_features(train), as_features(untrained)
    points = point_estimates(val, generated, train, untrained, nearest_k)
    draws = resampled_draws(val, generated, train, untrained, nearest_k, resampling, progress)
    estimates = {}
    for name, point in points.items():
        # A relative FD is undefined in a draw whose ceiling fell to its floor (toy models):
        # only finite draws count, and a number without 2 of them gets no interval at all.
        finite = draws[name][np.isfinite(draws[name])]
        if np.isfinite(point) and len(finite) >= 2:
            estimates[name] = within(summarise(point, finite, resampling.level), *RANGES[name])
    return estimates


def within(estimate: Estimate, lowest: float, highest: float) -> Estimate:
    """The estimate with its interval cut to the values the metric can take, never leaving
    out the point itself: a statistic at its bound (a recall of 0) has draws on one side only,
    so the bias shift moves both ends past the bound (`0 [0..-0.0002]`)."""
    lo = max(min(estimate.lo, estimate.point), lowest)
    hi = min(max(estimate.hi, estimate.point), highest)
    return replace(estimate, lo=lo, hi=hi)


def kid(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    subsets: int,
    subset_size: int,
    seed: int,
) -> tuple[float, float]:
    """KID's mean and standard deviation over `subsets` random subsets, by torchmetrics.

    KID (Bińkowski et al. 2018) is the squared MMD between the two feature sets under the cubic
    kernel (xᵀy / D + 1)³, estimated without bias on each pair of subsets (drawn without
    replacement, `subset_size` rows from each set): unlike an FD its expectation does not depend
    on N, so KIDs at different N compare. It can come out slightly below 0.

    torchmetrics' `KernelInceptionDistance` is given the cached features (its feature network is
    the identity). `subset_size` is clipped to the smaller set's size. Where it reaches a set's
    size every subset holds all of that set, so the standard deviation (over subsets, not a
    standard error of the mean) then shows only the other set's subsetting and understates the
    sampling noise.
    """
    import warnings

    import torch
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = as_features(real), as_features(fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    size = min(subset_size, len(real), len(fake))
    if size < 2 or subsets < 1:
        raise ValueError(f"KID needs 1 or more subsets of 2 or more rows, got {subsets} of {size}")
    with warnings.catch_warnings():  # "will save all extracted features": they are cached already
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=torch.nn.Identity(), subsets=subsets, subset_size=size, degree=3, coef=1.0
        )
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    with torch.random.fork_rng():  # its subsets come from torch's global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


@dataclass(frozen=True)
class FdInfinity:
    """FD = value + slope / N fitted over generated-set sizes N; `value` is the N → ∞ limit."""

    value: float
    slope: float
    sizes: tuple[int, ...]  # the generated-set sizes fitted
    fds: tuple[float, ...]  # the mean FD at each size


def fit_fd_infinity(sizes: tuple[int, ...], fds: tuple[float, ...]) -> tuple[float, float]:
    """(value, slope) of FD = value + slope / N by least squares in 1 / N."""
    inverse = 1.0 / np.asarray(sizes, dtype=np.float64)
    if len(np.unique(inverse)) < 2 or len(inverse) != len(fds):
        raise ValueError(f"a line needs FDs at 2 or more distinct sizes, got {sizes}, {fds}")
    design = np.column_stack([np.ones_like(inverse), inverse])
    (value, slope), *_ = np.linalg.lstsq(design, np.asarray(fds, dtype=np.float64), rcond=None)
    return float(value), float(slope)


def subset_sizes(n: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """round(f·n) for each fraction, each size once, in the fractions' order."""
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {fractions}")
    sizes = tuple(dict.fromkeys(round(f * n) for f in fractions))
    if min(sizes) < 2:
        raise ValueError(f"a covariance needs subsets of 2 or more rows, got sizes {sizes}")
    return sizes


def random_subsets(rng: np.random.Generator, n: int, size: int, draws: int) -> list[np.ndarray]:
    """`draws` subsets of range(n), each `size` distinct row indices (without replacement)."""
    return [rng.choice(n, size=size, replace=False) for _ in range(draws)]


def mean_subset_fd(fd: ResampledFrechet, subsets: list[np.ndarray]) -> float:
    """The mean FD of each subset of `fd`'s second set against the whole of its first."""
    every_real = np.arange(len(fd.a))
    return float(np.mean([fd(every_real, rows) for rows in subsets]))


def mean_fd_of_subsets(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    size: int,
    draws: int,
    seed: int,
) -> float:
    """The FD of `fake` against the whole `real` as it reads at `size` rows: the mean FD of
    `draws` random `size`-row subsets of `fake` (`random_subsets`, seeded by `seed`).

    An FD's bias grows as the rows get fewer, so this is what to compare an FD of `size` rows
    with: e.g. the train-vs-val floor, or the final generator, at a convergence curve's sample
    size.
    """
    real, fake = as_features(real), as_features(fake)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if not 2 <= size <= len(fake):
        raise ValueError(f"subsets of {size} rows need 2 to {len(fake)} rows, the set's size")
    subsets = random_subsets(np.random.default_rng(seed), len(fake), size, draws)
    # Only the drawn rows enter the cross product ResampledFrechet forms: a train split of tens
    # of thousands of rows would make it (val rows x train rows).
    used, where = np.unique(np.concatenate(subsets), return_inverse=True)
    fd = ResampledFrechet(real, fake[used])
    with single_threaded_blas():
        return mean_subset_fd(fd, np.split(where, draws))


def fd_infinity(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    fractions: tuple[float, ...],
    draws: int,
    seed: int,
) -> FdInfinity:
    """Chong & Forsyth's (2020) effectively unbiased FD∞ of `fake` against the whole `real`.

    An FD's bias falls as 1 / N in the generated-set size N, so FDs of random subsets of `fake`
    (without replacement) at sizes round(f · len(fake)), averaged over `draws` subsets per size
    (the full size has only one), are fitted as FD = value + slope / N and extrapolated to
    1 / N = 0. The `real` set stays whole: its own finite-sample bias stays in `value`, so two
    trials' FD∞ compare only when their val sets match.
    """
    real, fake = as_features(real), as_features(fake)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    sizes = subset_sizes(len(fake), fractions)
    fd = ResampledFrechet(real, fake)
    rng = np.random.default_rng(seed)
    with single_threaded_blas():
        by_size = {
            n: mean_subset_fd(fd, random_subsets(rng, len(fake), n, draws))
            for n in sizes
            if n < len(fake)
        }
    # the full set outside that block: the very gFD the evaluation reports, to the bit (BLAS
    # round-off depends on the thread count)
    if len(fake) in sizes:
        by_size[len(fake)] = frechet_distance_between(real, fake)
    fds = tuple(by_size[n] for n in sizes)
    value, slope = fit_fd_infinity(sizes, fds)
    return FdInfinity(value=value, slope=slope, sizes=sizes, fds=fds)
