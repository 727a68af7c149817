"""Bootstrap uncertainty of Frechet distances: one set's, and the paired difference of two.

The model is the bootstrap: the feature rows of each set are an i.i.d. sample, so a draw
resamples each set's rows with replacement, recomputes the statistic, and the spread of the draws
stands for the spread of the statistic over fresh samples. `se` is the draws' standard deviation.

The interval is the bias-shifted percentile interval: the draws' central `level` quantiles moved
by `bias` = mean of the draws - point, so that they are centred on the measured value. Why: a
Frechet distance at N < D is biased upwards, and a resample is biased more, because only about
63 % of its rows are distinct: its covariance has that lower rank, so the cross term
Tr((Σ1 Σ2)^½) shrinks while the traces do not, and the FD grows. That extra bias is an artefact of
duplicating rows, not of drawing a fresh sample, so the draws of an FD sit above its point
estimate (at 136 / 256 rows x 1,280 dims: point 374, draws 439-464) and a plain percentile
interval can miss the point altogether. The spread of the draws still measures how much the
statistic varies at this N; shifting it onto the point makes the interval describe that: the
spread of this statistic, at this N, around the value measured. It is not a correction of the
point's own bias, which an FD keeps (compare FDs at equal N, or see
`ldm.metrics.uncertainty.fd_infinity`). For an unbiased statistic such as a mean the shift is
about 0 and the interval is the percentile interval.

Comparing two generators, resample the shared reference once per draw for both
(`paired_fd_difference`): its noise, and most of that bias, is common to both terms and cancels
in the difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from ldm.metrics.frechet import ResampledFrechet, as_features, frechet_distance_between

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Resampling:
    """How to bootstrap: how many draws, the interval's coverage, and the generator's seed."""

    draws: int
    level: float  # e.g. 0.9
    seed: int

    def __post_init__(self) -> None:
        if self.draws < 2:
            raise ValueError(f"a bootstrap needs at least 2 draws, got {self.draws}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must lie strictly between 0 and 1, got {self.level}")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap standard error, bias and bias-shifted interval."""

    point: float
    se: float
    bias: float  # mean of the draws - point: how far resampling alone moves the statistic
    lo: float
    hi: float
    level: float  # the interval's coverage, e.g. 0.9
    draws: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval of bootstrap draws: their (1 ∓ level)/2 quantiles."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    values = np.asarray(values, dtype=np.float64)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def summarise(point: float, values: np.ndarray, level: float) -> Estimate:
    """The point with the draws' se, bias and percentile interval shifted by -bias."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        raise ValueError(f"a bootstrap needs at least 2 draws, got {len(values)}")
    lo, hi = percentile_interval(values, level)
    bias = float(values.mean() - point)
    return Estimate(
        point=float(point),
        se=float(np.std(values, ddof=1)),
        bias=bias,
        lo=lo - bias,
        hi=hi - bias,
        level=level,
        draws=len(values),
    )


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS on one thread: a draw's matrices are small (~100 x 200), so its threads only contend
    with each other and with torch's OpenMP pool; on 2 cores an SVD took 10-100 ms threaded, 0.5
    ms on one thread."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def resample(rng: np.random.Generator, n: int) -> np.ndarray:
    """n row indices drawn with replacement from range(n)."""
    return rng.integers(0, n, size=n)


def bootstrap_fd(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    resampling: Resampling,
    paired: bool = False,
) -> Estimate:
    """FD(real, fake) with its bootstrap se and interval; each draw resamples both sets.

    `paired`: row i of `fake` was made from row i of `real` (a reconstruction of that image),
    so a draw takes the same rows of both, as a fresh sample of images would bring a fresh
    reconstruction of each. Resampled apart, a set and its near-copy would lose their pairing,
    and the draws would measure a distance the data does not have."""
    real, fake = as_features(real), as_features(fake)
    if paired and len(real) != len(fake):
        raise ValueError(f"paired rows need as many of each, got {len(real)} and {len(fake)}")
    fd = ResampledFrechet(real, fake)
    rng = np.random.default_rng(resampling.seed)
    n_real, n_fake = len(real), len(fake)
    values = np.empty(resampling.draws)
    with single_threaded_blas():
        for i in range(resampling.draws):
            rows = resample(rng, n_real)
            values[i] = fd(rows, rows if paired else resample(rng, n_fake))
    return summarise(frechet_distance_between(real, fake), values, resampling.level)


def bootstrap_fd_per_class(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    fake_labels: np.ndarray,
    class_names: list[str],
    resampling: Resampling,
) -> dict[str, Estimate]:
    """Each class's FD (generated rows of the class against its real rows) with its bootstrap
    interval, keyed by class name; a class with fewer than 2 rows on either side is left out,
    as `frechet_distance_per_class` leaves it out. Class k draws from seed (seed, k), so a
    class's interval does not depend on which other classes exist."""
    real, fake = as_features(real), as_features(fake)
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    found = {}
    for label, name in enumerate(class_names):
        a, b = real[real_labels == label], fake[fake_labels == label]
        if min(len(a), len(b)) < 2:
            continue
        seed = int(np.random.SeedSequence([resampling.seed, label]).generate_state(1)[0])
        own = Resampling(resampling.draws, resampling.level, seed)
        found[name] = bootstrap_fd(a, b, own)
    return found


def same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and np.array_equal(a, b))


def paired_fd_difference(
    real: torch.Tensor | np.ndarray,
    fake_a: torch.Tensor | np.ndarray,
    fake_b: torch.Tensor | np.ndarray,
    resampling: Resampling,
) -> Estimate:
    """FD(real, fake_a) - FD(real, fake_b), paired: both terms of a draw see the same real rows.

    Generated sets of equal size also share their resampled row indices (common random
    numbers): the generators sample from the same seeds and labels row by row, so row j of
    either set is a like-for-like pair, and a set compared with itself differs by exactly 0 in
    every draw. Sets of different sizes are resampled independently.
    """
    real, fake_a, fake_b = as_features(real), as_features(fake_a), as_features(fake_b)
    same = same_rows(fake_a, fake_b)
    fd_a = ResampledFrechet(real, fake_a)
    fd_b = fd_a if same else ResampledFrechet(real, fake_b)
    shared = len(fake_a) == len(fake_b)
    rng = np.random.default_rng(resampling.seed)
    values = np.empty(resampling.draws)
    with single_threaded_blas():
        for i in range(resampling.draws):
            rows_real, rows_a = resample(rng, len(real)), resample(rng, len(fake_a))
            rows_b = rows_a if shared else resample(rng, len(fake_b))
            value_a = fd_a(rows_real, rows_a)
            # the same rows of the same set: the same distance, without a second round-off
            value_b = value_a if same else fd_b(rows_real, rows_b)
            values[i] = value_a - value_b
    point = 0.0
    if not same:
        point = frechet_distance_between(real, fake_a) - frechet_distance_between(real, fake_b)
    return summarise(point, values, resampling.level)
