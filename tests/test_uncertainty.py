"""Bootstrap intervals of the generation metrics, resampled PRDC, KID and FD∞."""

from __future__ import annotations

import numpy as np
import pytest
from prdc.prdc import compute_pairwise_distance

from ldm.metrics.bootstrap import Resampling, bootstrap_fd, percentile_interval, summarise
from ldm.metrics.frechet import frechet_distance_between
from ldm.metrics.manifold import precision_recall_density_coverage
from ldm.metrics.uncertainty import (
    FD_INFINITY_FRACTIONS,
    ResampledPrdc,
    fd_infinity,
    fit_fd_infinity,
    generation_estimates,
    kid,
    kth_neighbour_radii,
    resampled_draws,
)
from ldm.records import ReferenceLines


def pooled_features(
    rng: np.random.Generator, n: int, basis: np.ndarray, shift: float, noise: float = 0.5
) -> np.ndarray:
    """Post-ReLU pooled-feature look-alikes: a low-rank signal plus noise, clipped at 0."""
    signal = rng.normal(size=(n, len(basis))) @ basis
    return np.maximum(signal + noise * rng.normal(size=(n, basis.shape[1])) + shift, 0.0)


def evaluation_sets(
    seed: int, sizes: tuple[int, int, int, int], d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """val, generated, train and untrained features: train like val, generated a little off,
    untrained far off (a weaker signal, more noise)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(min(32, d // 2), d)) / np.sqrt(min(32, d // 2))
    n_val, n_gen, n_train, n_untrained = sizes
    return (
        pooled_features(rng, n_val, basis, 0.0),
        pooled_features(rng, n_gen, basis, 0.1),
        pooled_features(rng, n_train, basis, 0.0),
        pooled_features(rng, n_untrained, 0.3 * basis, 0.5, noise=1.0),
    )


REALISTIC = (136, 256, 256, 256)  # val, generated, train, untrained rows; 1,280 dims


def test_the_points_are_what_the_evaluation_functions_give() -> None:
    val, gen, train, untrained = evaluation_sets(1, (40, 60, 50, 60), 64)
    est = generation_estimates(val, gen, train, untrained, 3, Resampling(20, 0.9, 0))
    fd = frechet_distance_between(val, gen)
    lines = ReferenceLines(
        feature_net="test",
        fd_train_val=frechet_distance_between(val, train),
        fd_random_latents=frechet_distance_between(val, untrained),
    )
    assert est["fd"].point == fd
    assert est["fd_train_val"].point == lines.fd_train_val
    assert est["fd_random_latents"].point == lines.fd_random_latents
    assert est["relative_fd"].point == lines.relative(fd)
    for name, value in precision_recall_density_coverage(val, gen, 3).items():
        assert est[name].point == value
    assert {e.draws for e in est.values()} == {20}


@pytest.mark.parametrize(
    ("n_real", "n_fake", "nearest_k"), [(30, 50, 1), (50, 30, 3), (136, 256, 5)]
)
def test_prdc_of_every_row_once_is_prdcs_to_the_bit(
    n_real: int, n_fake: int, nearest_k: int
) -> None:
    rng = np.random.default_rng(n_real + nearest_k)
    real, fake = rng.normal(size=(n_real, 40)), rng.normal(loc=0.2, size=(n_fake, 40))
    prdc = ResampledPrdc(real, fake, nearest_k)
    expected = precision_recall_density_coverage(real, fake, nearest_k)
    assert prdc(np.arange(n_real), np.arange(n_fake)) == expected
    # the order of the rows does not matter, only which were drawn and how often
    assert prdc(rng.permutation(n_real), rng.permutation(n_fake)) == expected


def test_a_duplicated_row_is_never_its_own_neighbour() -> None:
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(12, 8)), rng.normal(size=(10, 8))
    prdc = ResampledPrdc(real, fake, nearest_k=1)
    rows_real = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 5, 7, 9])  # 8 distinct rows, 3 repeated
    rows_fake = np.array([0, 0, 1, 2, 2, 2, 3, 5, 6, 8])
    distinct_real, distinct_fake = np.unique(rows_real), np.unique(rows_fake)
    radii = prdc.radii(distinct_real, of_real=True)
    assert (radii > 1e-3).all()
    # a resample taken as a data set puts each repeated row at 0 from its copy (up to the
    # round-off of the distances' dot-product form)
    naive = kth_neighbour_radii(compute_pairwise_distance(real[rows_real]), 1)
    assert (naive < 1e-6).sum() == 7
    # the balls of the distinct rows, counted with the rows' multiplicities
    reference = compute_pairwise_distance(real[distinct_real])
    assert radii == pytest.approx(kth_neighbour_radii(reference, 1))
    fake_radii = prdc.radii(distinct_fake, of_real=False)
    d = compute_pairwise_distance(real[rows_real], fake[rows_fake])  # one row per draw's row
    r_real = radii[np.searchsorted(distinct_real, rows_real)]
    r_fake = fake_radii[np.searchsorted(distinct_fake, rows_fake)]
    got = prdc(rows_real, rows_fake)
    assert got["precision"] == pytest.approx((d < r_real[:, None]).any(axis=0).mean())
    assert got["recall"] == pytest.approx((d < r_fake[None, :]).any(axis=1).mean())
    assert got["density"] == pytest.approx((d < r_real[:, None]).sum(axis=0).mean())
    assert got["coverage"] == pytest.approx((d.min(axis=1) < r_real).mean())


def test_each_draw_takes_relative_fd_from_its_own_three_fds() -> None:
    val, gen, train, untrained = evaluation_sets(3, (30, 40, 40, 40), 48)
    counted: list[int] = []
    draws = resampled_draws(val, gen, train, untrained, 2, Resampling(30, 0.9, 4), counted.append)
    assert sum(counted) == 30  # one progress tick per draw
    floor, ceiling = draws["fd_train_val"], draws["fd_random_latents"]
    expected = (draws["fd"] - floor) / (ceiling - floor)
    assert draws["relative_fd"] == pytest.approx(expected, rel=1e-12)
    again = resampled_draws(val, gen, train, untrained, 2, Resampling(30, 0.9, 4), lambda n: None)
    assert all(np.array_equal(draws[name], again[name]) for name in draws)  # seeded


def test_every_interval_holds_its_point_at_the_trial_shapes() -> None:
    val, gen, train, untrained = evaluation_sets(5, REALISTIC, 1280)
    est = generation_estimates(val, gen, train, untrained, 5, Resampling(200, 0.9, 0))
    relative = est["relative_fd"]
    assert relative.lo <= relative.point <= relative.hi and relative.se > 0
    assert 0.0 < relative.point < 0.5  # generated lies near the floor, far from the ceiling
    for name, e in est.items():
        assert e.lo <= e.point <= e.hi, name
    assert est["coverage"].hi <= 1.0 and est["precision"].hi <= 1.0  # cut to the range
    assert est["fd"].bias > 0  # a resampled FD at N < D is biased upwards


def test_the_fd_interval_holds_its_point_at_fewer_rows_than_dimensions() -> None:
    val, gen, _, _ = evaluation_sets(6, (136, 256, 2, 2), 1280)
    est = bootstrap_fd(val, gen, Resampling(200, 0.9, 0))
    assert est.lo <= est.point <= est.hi
    # the draws' own quantiles, lo + bias, lie wholly above the point: the plain percentile
    # interval would have excluded it
    assert est.bias > 0 and est.point < est.lo + est.bias


def test_the_bias_of_a_mean_is_about_zero_and_its_interval_the_percentile_one() -> None:
    rng, n = np.random.default_rng(7), 200
    sample = rng.normal(size=n)
    means = sample[rng.integers(0, n, size=(2000, n))].mean(axis=1)
    est = summarise(sample.mean(), means, 0.9)
    assert abs(est.bias) < 0.05 * est.se
    lo, hi = percentile_interval(means, 0.9)
    assert (est.lo, est.hi) == pytest.approx((lo - est.bias, hi - est.bias), abs=1e-12)
    assert est.to_dict()["bias"] == est.bias


def test_kid_is_about_zero_for_one_distribution_and_positive_for_a_shift() -> None:
    rng = np.random.default_rng(8)
    real, same, shifted = rng.normal(size=(3, 300, 64))
    shifted = shifted + 0.3
    mean, std = kid(real, same, subsets=50, subset_size=100, seed=1)
    assert abs(mean) < 2 * std
    # a subset size above both sets' is clipped to 300: every subset is then the whole of each
    # set, so all subsets agree and the std is 0
    whole, spread = kid(real, same, subsets=3, subset_size=1000, seed=1)
    assert abs(whole) < 2 * std and spread == pytest.approx(0.0, abs=1e-12)
    mean_shifted, std_shifted = kid(real, shifted, subsets=50, subset_size=150, seed=1)
    assert mean_shifted > 5 * std_shifted > 0
    assert kid(real, shifted, subsets=50, subset_size=150, seed=1) == (mean_shifted, std_shifted)


def test_fd_infinity_recovers_a_line_in_one_over_n() -> None:
    sizes = (50, 60, 70, 80, 90, 100)
    fds = tuple(12.5 + 300.0 / n for n in sizes)
    value, slope = fit_fd_infinity(sizes, fds)
    assert value == pytest.approx(12.5, rel=1e-10) and slope == pytest.approx(300.0, rel=1e-10)
    with pytest.raises(ValueError, match="2 or more distinct sizes"):
        fit_fd_infinity((50, 50), (1.0, 2.0))


def test_fd_infinity_lies_below_the_fd_at_fewer_rows_than_dimensions() -> None:
    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(120, 200)), rng.normal(size=(150, 200))  # one distribution
    result = fd_infinity(real, fake, FD_INFINITY_FRACTIONS, draws=5, seed=0)
    full = frechet_distance_between(real, fake)
    assert result.sizes == (75, 90, 105, 120, 135, 150)
    assert result.fds[-1] == full
    assert list(result.fds) == sorted(result.fds, reverse=True)  # more rows, less bias
    assert result.slope > 0 and result.value < full


def test_resampling_rejects_settings_that_give_no_interval() -> None:
    with pytest.raises(ValueError, match="at least 2 draws"):
        Resampling(draws=1, level=0.9, seed=0)
    with pytest.raises(ValueError, match="level"):
        Resampling(draws=10, level=1.0, seed=0)


def test_a_relative_fd_without_a_span_gets_no_interval() -> None:
    """Ceiling = floor (an untrained line no worse than real data, as toy models give): the
    relative FD is undefined, so it gets no interval, and the other numbers keep theirs."""
    val, gen, train, _ = evaluation_sets(5, (30, 40, 40, 40), 48)
    estimates = generation_estimates(val, gen, train, train, 2, Resampling(20, 0.9, 0))
    assert "relative_fd" not in estimates
    assert {"fd", "fd_train_val", "fd_random_latents", "precision"} <= set(estimates)


def test_an_interval_cut_to_its_range_still_holds_its_point() -> None:
    from ldm.metrics.bootstrap import Estimate
    from ldm.metrics.uncertainty import within

    # a recall of 0: every draw >= 0, so the bias shift carried both ends below 0
    at_bound = Estimate(point=0.0, se=1e-4, bias=3e-4, lo=-3e-4, hi=-2e-4, level=0.9, draws=50)
    cut = within(at_bound, 0.0, 1.0)
    assert (cut.lo, cut.hi) == (0.0, 0.0)
    inside = Estimate(point=0.5, se=0.1, bias=0.0, lo=0.3, hi=1.2, level=0.9, draws=50)
    assert (within(inside, 0.0, 1.0).lo, within(inside, 0.0, 1.0).hi) == (0.3, 1.0)
