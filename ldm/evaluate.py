"""Image-quality metrics: PSNR, SSIM, and Frechet distances in a named feature space.

Non-obvious choices:
- PSNR and SSIM are computed per image on the [0, 1] scale after clamping, as a saved PNG would
  be; PSNR of identical images is capped at 100 dB (MSE floored at 1e-10) so means stay finite.
- SSIM follows Wang et al. 2004 (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, no padding),
  which is skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`.
- A Frechet distance is named after its feature network (`metric_name`): only Inception features
  make a number an FID. The offline default is the packaged EfficientNet-Lite2, a different
  network from the Lite0 the tokenizer is aligned to, so alignment cannot game the metric.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldm.errors import LdmError, WeightsMissing
from ldm.tokenizer.perceptual import effnet_input, load_effnet_lite

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


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and covariance (D, D), float64."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else features
    f = np.asarray(f, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


class RunningMoments:
    """Mean and covariance of (N, D) rows added batch by batch: memory D², not N·D.

    float64 sums of the rows minus the first batch's mean (the shifted-data formula), so the
    covariance keeps its digits when the mean is large next to the spread. They stay on the
    rows' device.
    """

    def __init__(self) -> None:
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        r = rows.detach().double()  # (B, D)
        if self.shift is None:
            self.shift = r.mean(dim=0)
            self.total = torch.zeros_like(self.shift)
            self.outer = r.new_zeros(len(self.shift), len(self.shift))
        r = r - self.shift
        self.count += len(r)
        self.total += r.sum(dim=0)
        self.outer += r.T @ r  # (D, D)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean (D,) and covariance (D, D), float64, as `feature_stats` of all rows gives."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 rows, got {self.count}")
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return (mean + self.shift).cpu().numpy(), cov.cpu().numpy()


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """‖μ1 - μ2‖² + Tr(Σ1) + Tr(Σ2) - 2·Tr((Σ1^½ Σ2 Σ1^½)^½).

    The trace of (Σ1 Σ2)^½ is taken through the symmetric form Σ1^½ Σ2 Σ1^½, whose eigenvalues
    are real and non-negative. That stays exact and real when there are fewer samples than
    feature dimensions (singular covariances), where a general matrix square root of Σ1 Σ2, as
    pytorch-fid takes it, returns complex noise.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"stats differ in shape: {mu1.shape} vs {mu2.shape}")
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T  # Σ1^½, symmetric
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1).clip(min=0)
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(inner).sum()
    return float(max(distance, 0.0))


def metric_name(feature_name: str) -> str:
    """fd_<network>: a Frechet distance is only comparable within one feature network."""
    return f"fd_{feature_name}"


class FeatureNet(nn.Module):
    """A frozen network mapping images in [-1, 1] (B, 3, H, W) to pooled features (B, dim)."""

    name: str
    dim: int

    def train(self, mode: bool = True) -> FeatureNet:
        """Stay in eval mode: BatchNorm must keep the pretrained statistics."""
        return super().train(False)


class EffnetLite2Features(FeatureNet):
    """Packaged ImageNet EfficientNet-Lite2 at its native 260 px, global-average-pooled."""

    name, dim, size = "effnet_lite2", 1280, 260

    def __init__(self) -> None:
        super().__init__()
        self.net = load_effnet_lite("lite2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        x = effnet_input(x).contiguous(memory_format=torch.channels_last)  # as the fused weights
        return self.net.extract_features(x).mean(dim=(2, 3))  # (B, 1280)


class InceptionFeatures(FeatureNet):
    """pytorch-fid's FID Inception-v3 (pool3, 2048-d) from a local weights file."""

    name, dim = "inception", 2048

    def __init__(self, weights: Path) -> None:
        super().__init__()
        from pytorch_fid import inception

        state = torch.load(weights, map_location="cpu", weights_only=True)
        # pytorch-fid always fetches its weights by URL; hand it the local file instead.
        patch = mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: state)
        with patch:
            self.net = inception.InceptionV3([3], resize_input=True, normalize_input=True)
        self.net.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x + 1.0) / 2.0)[0].flatten(1)  # it takes [0, 1]; (B, 2048)


def require_weights(name: str, weights: Path | None, expected: str) -> Path:
    """The local weights file for `name`, or a WeightsMissing saying what to do."""
    if weights is None or not Path(weights).is_file():
        raise WeightsMissing(
            f"evaluate.features: {name} needs {expected} as a local file, and "
            f"{weights or '(none given)'} is not a file. Set evaluate.features_weights to its "
            "path, or use the packaged network with evaluate.features: effnet_lite2."
        )
    return Path(weights)


def load_eval_features(name: str, weights: Path | None) -> FeatureNet:
    """The frozen feature network selected by `evaluate.features`, in eval mode."""
    if name == "effnet_lite2":
        net: FeatureNet = EffnetLite2Features()
    elif name == "inception":
        if importlib.util.find_spec("pytorch_fid") is None:
            raise LdmError(
                "evaluate.features: inception uses pytorch-fid's FID Inception, and that package "
                "is not installed. Run `pip install pytorch-fid`, put its weights file "
                "pt_inception-2015-12-05-6726825d.pth on this machine and set "
                "evaluate.features_weights to its path; or use evaluate.features: effnet_lite2."
            )
        path = require_weights(name, weights, "pytorch-fid's pt_inception-2015-12-05-*.pth")
        net = InceptionFeatures(path)
    elif name == "dinov2_vitl14":
        require_weights(name, weights, "a DINOv2 ViT-L/14 checkpoint")
        raise LdmError(
            "evaluate.features: dinov2_vitl14 (FD_DINOv2) comes with a later version of ldm; "
            "use evaluate.features: effnet_lite2 for now."
        )
    else:
        raise ValueError(
            f"unknown feature network {name!r}: effnet_lite2 | inception | dinov2_vitl14"
        )
    return net.eval()
