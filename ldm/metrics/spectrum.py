"""How much of a signal's spectral energy sits at high spatial frequencies: latents against images.

A latent space whose energy sits at frequencies the images hardly use makes a diffusion model
spend capacity on detail the pixels do not need (Skorokhodov et al. 2025, "Improving the
diffusability of autoencoders"). Measured
with the orthonormal 2-D DCT-II per channel: coefficient (u, v) of an H × W map has the
normalised frequency max(u / H, v / W) in [0, 1), so an 8 × 8 latent and a 32 × 32 image sit on
the same scale. The share is the energy at or above a cut over all energy but the DC
coefficient (0, 0): a channel's mean level says nothing about its frequencies. Energies are
summed over the images per channel, the share taken per channel and then averaged over the
channels, so that a channel of large amplitude does not speak for all.
"""

from __future__ import annotations

import numpy as np

# Half of the highest frequency a map can hold: "high" is the upper half of each axis' band,
# where an 8 × 8 latent has 4 coefficients per axis and a 32 × 32 image 16.
HIGH_FREQUENCY_CUT = 0.5


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II as an (n, n) matrix: row u is basis function u, so D @ x is the
    transform of x and D.T @ c its inverse."""
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))  # (u, x)
    scale = np.full((n, 1), np.sqrt(2.0 / n))
    scale[0] = np.sqrt(1.0 / n)
    return scale * basis


def channel_energy(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) maps -> (C, H, W): each DCT coefficient's energy, summed over the N maps.

    Sums add up batch by batch, so a split never has to be in memory whole."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"expected maps of shape (N, C, H, W), got {x.shape}")
    h, w = x.shape[-2:]
    coefficients = dct_matrix(h) @ x @ dct_matrix(w).T  # (N, C, H, W): two matrix products
    return (coefficients**2).sum(axis=0)


def frequency_grid(h: int, w: int) -> np.ndarray:
    """(H, W) normalised frequency max(u / H, v / W) of each DCT coefficient."""
    return np.maximum(np.arange(h)[:, None] / h, np.arange(w)[None, :] / w)


def share_of_energy(energy: np.ndarray, cut: float = HIGH_FREQUENCY_CUT) -> float:
    """The mean over channels of the share of (C, H, W) `energy` (from `channel_energy`) at
    normalised frequency ≥ `cut`, of all but the DC coefficient's. A channel with no energy
    off DC (constant maps) holds no detail at any frequency and counts as 0."""
    if not 0.0 < cut < 1.0:
        raise ValueError(f"the cut must lie strictly between 0 and 1, got {cut}")
    energy = np.asarray(energy, dtype=np.float64)
    high = frequency_grid(*energy.shape[-2:]) >= cut  # (H, W); DC (0 / H = 0) never high
    varying = energy.sum(axis=(1, 2)) - energy[:, 0, 0]  # (C,)
    high_energy = energy[:, high].sum(axis=1)
    shares = np.divide(high_energy, varying, out=np.zeros_like(varying), where=varying > 0)
    return float(shares.mean())


def high_frequency_share(x: np.ndarray, cut: float = HIGH_FREQUENCY_CUT) -> float:
    """`share_of_energy` of the (N, C, H, W) maps `x` in one go."""
    return share_of_energy(channel_energy(x), cut)
