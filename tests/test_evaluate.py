"""Metrics: PSNR/SSIM against known values and skimage, Frechet distance identities, offline
feature networks and the errors that name the setting to change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from ldm.errors import LdmError
from ldm.metrics.frechet import feature_stats, frechet_distance, metric_name
from ldm.metrics.pixels import PSNR_CAP_DB, psnr, ssim
from ldm.pretrained.features import load_eval_features


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random low-frequency images in [-1, 1]: upsampled 8x8 noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1) * 2 - 1


def test_psnr_identical_is_cap_and_offset_is_known() -> None:
    x = smooth_images(3)
    assert torch.allclose(psnr(x, x), torch.full((3,), PSNR_CAP_DB, dtype=torch.float64))
    unit = torch.rand(2, 3, 16, 16) * 0.9  # room for +0.1 without clamping
    shifted = (unit + 0.1) * 2 - 1
    assert torch.allclose(psnr(unit * 2 - 1, shifted), torch.full((2,), 20.0, dtype=torch.float64))


def test_ssim_identical_is_one_and_matches_skimage() -> None:
    x = smooth_images(4, seed=1)
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=torch.float64))
    ours = ssim(x, y)
    for i in range(4):
        a = ((x[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        b = ((y[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        ref = structural_similarity(
            a,
            b,
            channel_axis=2,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert abs(ours[i].item() - ref) < 1e-3


def test_frechet_distance_identities() -> None:
    rng = np.random.default_rng(0)
    mu, sigma = feature_stats(torch.from_numpy(rng.normal(size=(500, 16))))
    assert mu.dtype == np.float64 and sigma.shape == (16, 16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    shift = rng.normal(size=16)
    fd = frechet_distance(mu, sigma, mu + shift, sigma)
    assert fd == pytest.approx(float(shift @ shift), rel=1e-6, abs=1e-6)


def test_metric_names_follow_the_network() -> None:
    assert metric_name("effnet_lite2") == "fd_effnet_lite2"
    assert metric_name("inception") == "fd_inception"


def test_effnet_lite2_features_load_offline() -> None:
    net = load_eval_features("effnet_lite2", None)
    assert net.name == "effnet_lite2" and not net.training
    net.train()  # a parent's .train() must not unfreeze the BatchNorm statistics
    assert not net.training
    with torch.no_grad():
        f = net(smooth_images(2))
    assert f.shape == (2, net.dim) and torch.isfinite(f).all()


@pytest.mark.parametrize("name", ["inception", "dinov2_vitl14"])
def test_missing_feature_weights_name_setting_and_fallback(name: str, tmp_path: Path) -> None:
    for weights in (None, tmp_path / "absent.pth"):
        with pytest.raises(LdmError) as err:
            load_eval_features(name, weights)
        assert "evaluate.features_weights" in str(err.value)
        assert "evaluate.features: effnet_lite2" in str(err.value)


@pytest.mark.skipif(
    importlib.util.find_spec("pytorch_fid") is not None, reason="pytorch-fid is installed"
)
def test_inception_without_pytorch_fid_says_how_to_install(tmp_path: Path) -> None:
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"")
    for given in (weights, None):
        with pytest.raises(LdmError, match="pip install pytorch-fid"):
            load_eval_features("inception", given)


def test_frechet_distance_matches_scipy_and_stays_real_with_few_samples() -> None:
    from scipy import linalg

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(400, 8)), rng.normal(loc=0.3, scale=1.5, size=(400, 8))
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    reference = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    # 12 samples in 64 dimensions: singular covariances, as on a small val split.
    few_a, few_b = rng.normal(size=(12, 64)), rng.normal(size=(12, 64))
    fd = frechet_distance(*feature_stats(few_a), *feature_stats(few_b))
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(*feature_stats(few_a), *feature_stats(few_a)) < 1e-6

