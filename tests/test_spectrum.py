"""The high-frequency share of ldm/metrics/spectrum.py, on maps built from DCT basis functions
with chosen coefficients, so that the right share is known."""

from __future__ import annotations

import numpy as np
import pytest

from ldm.metrics.spectrum import (
    HIGH_FREQUENCY_CUT,
    channel_energy,
    dct_matrix,
    high_frequency_share,
    share_of_energy,
)


def from_coefficients(h: int, w: int, coefficients: dict[tuple[int, int], float]) -> np.ndarray:
    """The (H, W) map whose orthonormal DCT-II holds `coefficients` and zeros elsewhere."""
    c = np.zeros((h, w))
    for (u, v), value in coefficients.items():
        c[u, v] = value
    return dct_matrix(h).T @ c @ dct_matrix(w)


def test_the_dct_is_orthonormal_and_inverts_the_maps_it_builds() -> None:
    d = dct_matrix(8)
    assert np.allclose(d @ d.T, np.eye(8))
    x = from_coefficients(8, 8, {(0, 1): 2.0, (5, 3): -1.0})
    energy = channel_energy(x[None, None])[0]
    assert energy[0, 1] == pytest.approx(4.0) and energy[5, 3] == pytest.approx(1.0)
    assert energy.sum() == pytest.approx((x**2).sum())  # Parseval: orthonormal


def test_known_spectra_give_known_shares() -> None:
    low = from_coefficients(8, 8, {(0, 1): 1.0})  # frequency 1/8: all of it low
    assert high_frequency_share(low[None, None]) == pytest.approx(0.0)
    # energy 3 : 1 between a low (1, 0) and a high (0, 6) coefficient, plus a DC that must
    # not count: a quarter of the energy off DC is high
    split = from_coefficients(8, 8, {(1, 0): np.sqrt(3.0), (0, 6): 1.0, (0, 0): 10.0})
    assert high_frequency_share(split[None, None]) == pytest.approx(0.25)
    # max(u / H, v / W): (4, 1) has frequency 4 / 8 = 0.5, at the cut, so high
    assert HIGH_FREQUENCY_CUT == 0.5
    edge = from_coefficients(8, 8, {(4, 1): 1.0, (3, 3): 1.0})
    assert high_frequency_share(edge[None, None]) == pytest.approx(0.5)


def test_energies_add_over_maps_and_shares_average_over_channels() -> None:
    low, high = from_coefficients(8, 8, {(1, 1): 1.0}), from_coefficients(8, 8, {(7, 0): 1.0})
    # channel 0: one map all low, one all high (energy summed over maps: 1/2); channel 1: all
    # high; a constant channel 2, which has no energy off DC, counts as 0
    maps = np.stack(
        [np.stack([low, high, np.full((8, 8), 3.0)]), np.stack([high, high, np.ones((8, 8))])]
    )
    assert maps.shape == (2, 3, 8, 8)
    assert high_frequency_share(maps) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # batch by batch, as the evaluation sums them
    summed = channel_energy(maps[:1]) + channel_energy(maps[1:])
    assert share_of_energy(summed) == pytest.approx(high_frequency_share(maps))
    # a channel's amplitude does not weigh it: scaling one channel leaves the mean share
    scaled = maps * np.array([100.0, 1.0, 1.0])[None, :, None, None]
    assert high_frequency_share(scaled) == pytest.approx(high_frequency_share(maps))


def test_latents_and_images_of_different_sizes_share_one_frequency_scale() -> None:
    # the same normalised frequency 3/8 = 12/32 (low) and 6/8 = 24/32 (high) in both sizes
    latent = from_coefficients(8, 8, {(3, 0): 1.0, (0, 6): 1.0})
    image = from_coefficients(32, 32, {(12, 0): 1.0, (0, 24): 1.0})
    assert high_frequency_share(latent[None, None]) == pytest.approx(0.5)
    assert high_frequency_share(np.repeat(image[None, None], 3, axis=1)) == pytest.approx(0.5)
    # white noise spreads evenly: the share is the share of high coefficients, at any size
    rng = np.random.default_rng(0)
    for side in (8, 32):
        noise = rng.standard_normal((400, 2, side, side))
        grid = np.maximum(*np.meshgrid(np.arange(side), np.arange(side))) / side
        expected = ((grid >= 0.5).sum()) / (side * side - 1)
        assert high_frequency_share(noise) == pytest.approx(expected, abs=0.02)


def test_a_cut_outside_the_band_is_refused() -> None:
    with pytest.raises(ValueError, match="cut"):
        share_of_energy(np.ones((1, 4, 4)), cut=1.0)
