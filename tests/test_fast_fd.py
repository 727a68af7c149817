"""The Frechet distance from rows (N1 × N2 SVD) and from resampled rows against a 40-digit
reference, a closed form and the covariance route; the bootstrap's interval coverage and the
paired difference."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from scipy.linalg import hadamard

from ldm.metrics.bootstrap import (
    Estimate,
    Resampling,
    bootstrap_fd,
    paired_fd_difference,
    percentile_interval,
)
from ldm.metrics.frechet import (
    ResampledFrechet,
    feature_stats,
    frechet_distance,
    frechet_distance_between,
    frechet_distance_of_rows,
)


def reference_fd(a: np.ndarray, b: np.ndarray, digits: int = 40) -> float:
    """‖μ1-μ2‖² + Tr Σ1 + Tr Σ2 - 2 Tr((Σ1^½ Σ2 Σ1^½)^½), every step in mpmath at `digits`."""
    with mpmath.workdps(digits):

        def stats(rows: np.ndarray) -> tuple[mpmath.matrix, mpmath.matrix]:
            x = mpmath.matrix(rows.tolist())  # floats convert exactly
            n, d = x.rows, x.cols
            mean = mpmath.matrix([[sum(x[i, j] for i in range(n)) / n for j in range(d)]])
            c = x - mpmath.ones(n, 1) * mean
            return mean, c.T * c / (n - 1)

        def root(s: mpmath.matrix) -> mpmath.matrix:
            values, vectors = mpmath.eigsy(s)
            halves = mpmath.diag([mpmath.sqrt(max(v, 0)) for v in values])
            return vectors * halves * vectors.T

        (m1, s1), (m2, s2) = stats(a), stats(b)
        r1 = root(s1)
        inner, _ = mpmath.eigsy(r1 * s2 * r1)
        diff = m1 - m2
        trace = sum(s1[i, i] + s2[i, i] for i in range(s1.rows))
        fd = (diff * diff.T)[0, 0] + trace - 2 * sum(mpmath.sqrt(max(v, 0)) for v in inner)
        return float(fd)


@pytest.mark.parametrize(("n1", "n2"), [(4, 4), (10, 10), (4, 10)])
def test_fd_from_rows_matches_a_40_digit_reference(n1: int, n2: int) -> None:
    rng, d = np.random.default_rng(n1 * 100 + n2), 6
    a = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
    b = rng.normal(loc=0.4, size=(n2, d)) @ rng.normal(size=(d, d))
    expected = reference_fd(a, b)
    assert frechet_distance_of_rows(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_between(a, b) == pytest.approx(expected, rel=1e-8)
    every_row = ResampledFrechet(a, b)(np.arange(n1), np.arange(n2))
    assert every_row == pytest.approx(expected, rel=1e-8)


def test_fd_from_rows_equals_the_closed_form_for_commuting_covariances() -> None:
    # 8 rows in 16 dimensions: orthogonal ±1 Hadamard columns, scaled and rotated, so each set's
    # sample covariance is exactly Q diag(v) Qᵀ, rank 4, sharing the basis Q but not the axes.
    d, n, q = 16, 8, np.linalg.qr(np.random.default_rng(7).normal(size=(16, 16)))[0]
    signs = hadamard(n)[:, 1:5].astype(np.float64)  # zero-mean, orthogonal columns

    def rows(variances: np.ndarray, axes: list[int], mean: np.ndarray) -> np.ndarray:
        scaled = signs * np.sqrt(variances * (n - 1) / n)  # column variance: exactly v
        return scaled @ np.eye(d)[axes] @ q.T + mean

    v1, v2 = np.array([1.0, 2.0, 0.5, 3.0]), np.array([1.5, 0.7, 2.5, 0.2])
    mu1, mu2 = np.random.default_rng(8).normal(size=(2, d))
    x, y = rows(v1, [0, 1, 2, 3], mu1), rows(v2, [2, 3, 4, 5], mu2)
    var1, var2 = np.zeros(d), np.zeros(d)
    var1[[0, 1, 2, 3]], var2[[2, 3, 4, 5]] = v1, v2
    expected = (mu1 - mu2) @ (mu1 - mu2) + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert frechet_distance_of_rows(x, y) == pytest.approx(expected, rel=1e-10)
    assert ResampledFrechet(x, y)(np.arange(n), np.arange(n)) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance_of_rows(x, x) == pytest.approx(0.0, abs=1e-12)


def pooled_features(
    rng: np.random.Generator, n: int, basis: np.ndarray, shift: float
) -> np.ndarray:
    """Post-ReLU pooled-feature look-alikes: a low-rank signal plus noise, clipped at 0."""
    signal = rng.normal(size=(n, len(basis))) @ basis
    return np.maximum(signal + 0.5 * rng.normal(size=(n, basis.shape[1])) + shift, 0.0)


def test_fd_from_rows_matches_the_covariance_route_at_the_trial_shapes() -> None:
    rng, d = np.random.default_rng(9), 1280
    basis = rng.normal(size=(32, d)) / np.sqrt(32)
    real, fake = pooled_features(rng, 136, basis, 0.0), pooled_features(rng, 256, basis, 0.1)
    today = frechet_distance(*feature_stats(real), *feature_stats(fake))
    assert frechet_distance_between(real, fake) == pytest.approx(today, rel=1e-6)


def test_a_resampled_fd_equals_the_fd_of_the_resampled_rows() -> None:
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(30, 50)) + 100.0, rng.normal(loc=0.2, size=(40, 50)) + 100.0
    fd = ResampledFrechet(a, b)
    for _ in range(3):
        rows_a, rows_b = rng.integers(0, 30, 30), rng.integers(0, 40, 40)
        expected = frechet_distance_of_rows(a[rows_a], b[rows_b])
        assert fd(rows_a, rows_b) == pytest.approx(expected, rel=1e-10)
    wide = ResampledFrechet(a[:, :5], b[:, :5])  # N > D: the covariance route
    expected = frechet_distance(*feature_stats(a[rows_a, :5]), *feature_stats(b[rows_b, :5]))
    assert wide(rows_a, rows_b) == pytest.approx(expected, rel=1e-12)


def test_the_90_percent_interval_of_a_mean_covers_the_true_mean_85_to_95_percent() -> None:
    rng, n, draws, repeats = np.random.default_rng(11), 100, 1000, 400
    covered = 0
    for _ in range(repeats):
        sample = rng.gamma(4.0, size=n)  # true mean 4, mildly skewed
        means = sample[rng.integers(0, n, size=(draws, n))].mean(axis=1)
        lo, hi = percentile_interval(means, 0.9)
        covered += lo <= 4.0 <= hi
    assert 0.85 <= covered / repeats <= 0.95


def test_the_paired_difference_of_a_set_with_itself_is_zero_in_every_draw() -> None:
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(20, 40)), rng.normal(loc=0.3, size=(24, 40))
    for other in (fake, fake.copy()):  # the same object, and an equal copy
        diff = paired_fd_difference(real, fake, other, Resampling(50, 0.9, 3))
        assert (diff.point, diff.se, diff.lo, diff.hi) == (0.0, 0.0, 0.0, 0.0)


def test_a_bootstrap_estimate_holds_its_point_and_has_a_spread() -> None:
    # Many rows in few dimensions: the resampling bias of an FD is small next to its spread.
    rng = np.random.default_rng(13)
    real, fake = rng.normal(size=(300, 4)), rng.normal(loc=0.5, size=(200, 4))
    est = bootstrap_fd(real, fake, Resampling(200, 0.9, 1))
    assert isinstance(est, Estimate) and est.draws == 200
    assert est.lo <= est.point <= est.hi and est.se > 0
    assert est.point == pytest.approx(frechet_distance_between(real, fake))
    assert est.to_dict() == {
        "point": est.point, "se": est.se, "bias": est.bias, "lo": est.lo, "hi": est.hi,
        "level": 0.9, "draws": 200,
    }  # fmt: skip
    few, more = rng.normal(size=(20, 40)), rng.normal(size=(30, 40))
    wide = bootstrap_fd(few, more, Resampling(20, 0.9, 0))
    assert wide.se > 0 and np.isfinite(wide.point)  # N < D: the Gram route


def test_paired_rows_resample_a_set_and_its_reconstruction_together() -> None:
    # row i of `copy` reconstructs row i of `real`: drawn together, their FD stays about as
    # small as measured; drawn apart, each draw's duplicates alone push it far above
    rng = np.random.default_rng(15)
    real = rng.normal(size=(60, 30))
    copy = real + 0.01 * rng.normal(size=real.shape)
    paired = bootstrap_fd(real, copy, Resampling(100, 0.9, 4), paired=True)
    apart = bootstrap_fd(real, copy, Resampling(100, 0.9, 4))
    assert paired.point == apart.point < 0.1
    assert paired.lo <= paired.point <= paired.hi and paired.se < 0.1
    assert apart.bias > 10 * paired.se
    with pytest.raises(ValueError, match="paired"):
        bootstrap_fd(real, copy[:50], Resampling(10, 0.9, 0), paired=True)


def test_a_paired_difference_sees_a_shift_the_shared_reference_would_hide() -> None:
    rng, d = np.random.default_rng(14), 64
    basis = rng.normal(size=(8, d)) / np.sqrt(8)
    real = pooled_features(rng, 40, basis, 0.0)
    near, far = pooled_features(rng, 60, basis, 0.0), pooled_features(rng, 60, basis, 0.3)
    diff = paired_fd_difference(real, near, far, Resampling(200, 0.9, 2))
    assert diff.hi < 0 and diff.lo <= diff.point <= diff.hi
