"""PSNR and SSIM per image, on the [0, 1] scale after clamping, as a saved PNG would be.

Non-obvious choices:
- PSNR of identical images is capped at 100 dB (MSE floored at 1e-10) so means stay finite.
- SSIM follows Wang et al. 2004 (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, no padding),
  which is skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`; ours runs batched on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> float64 in [0, 1], clamped as when saved."""
    return ((x.double() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB on the [0, 1] scale (max 1); identical images give PSNR_CAP_DB."""
    mse = (to_unit(x) - to_unit(y)).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-PSNR_CAP_DB / 10.0)))


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, float64."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(t**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM on the [0, 1] scale, per channel then averaged; images >= 11 px."""
    a, b = to_unit(x), to_unit(y)  # (B, C, H, W)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW} px, got {tuple(a.shape)}")
    channels = a.shape[1]
    g = gaussian_window(SSIM_WINDOW, SSIM_SIGMA).to(a.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        # separable depthwise Gaussian without padding: border pixels are not scored (skimage)
        t = F.conv2d(t, g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(t, g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)

    mu_a, mu_b = blur(a), blur(b)  # (B, C, H - 10, W - 10)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return s.flatten(1).mean(dim=1)  # (B,)
