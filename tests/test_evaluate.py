"""Metrics: PSNR/SSIM against known values and skimage, Frechet distance against its closed form
(overall and per class), precision/recall/density/coverage, streaming feature extraction, offline
feature networks and the errors that name the setting to change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from ldm.errors import DataError, LdmError
from ldm.metrics.bootstrap import Resampling, bootstrap_fd_per_class
from ldm.metrics.extract import batches_of, extract_features
from ldm.metrics.frechet import (
    RunningMoments,
    feature_stats,
    frechet_distance,
    frechet_distance_between,
    frechet_distance_per_class,
    metric_name,
)
from ldm.metrics.manifold import precision_recall_density_coverage
from ldm.metrics.pixels import PSNR_CAP_DB, psnr, ssim
from ldm.pretrained import base
from ldm.pretrained.features import load_eval_features
from ldm.records import TokenizerQuality


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


def test_feature_nets_take_cpu_batches_in_micro_batches_with_the_same_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = load_eval_features("effnet_lite2", None)
    seen: list[int] = []
    whole_batch = net.pooled
    monkeypatch.setattr(net, "pooled", lambda x: seen.append(len(x)) or whole_batch(x))
    monkeypatch.setattr(base, "CPU_MICRO_BATCH", 2)
    images = smooth_images(5)
    with torch.no_grad():
        split = net(images)
        whole = whole_batch(images)
    assert seen == [2, 2, 1]  # in order, the last one short
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(split[0], split[1])  # rows are the images', not one repeated


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


def test_running_moments_give_the_stats_of_all_rows_batch_by_batch() -> None:
    rng = np.random.default_rng(4)
    # A mean far above the spread: naive sums of squares would lose the covariance's digits.
    rows = 1e4 + rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    moments = RunningMoments()
    for part in np.split(rows, [1, 50, 51, 200]):  # uneven batches, one of a single row
        moments.add(torch.from_numpy(part))
    mean, cov = moments.stats()
    expected_mean, expected_cov = feature_stats(rows)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(cov, expected_cov, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2 rows"):
        RunningMoments().stats()


# -- Frechet distance against its closed form ---------------------------------------------------


def closed_form_fd(mu1, var1, mu2, var2) -> float:
    """‖μ1-μ2‖² + Σ(√a - √b)² for covariances diagonal in one shared basis (a, b their spectra)."""
    return float((mu1 - mu2) @ (mu1 - mu2) + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum())


def rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


@pytest.mark.parametrize("rank", [16, 3])
def test_frechet_distance_equals_closed_form_for_commuting_covariances(rank: int) -> None:
    rng, d = np.random.default_rng(2), 16
    a = np.where(np.arange(d) < rank, rng.uniform(0.5, 3.0, d), 0.0)
    b = np.where(np.arange(d) >= d - rank, rng.uniform(0.5, 3.0, d), 0.0)  # other null space
    q = rotation(d, 3)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    fd = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    # each null direction leaves √(round-off) ≈ 1e-8 in the trace term
    assert fd == pytest.approx(closed_form_fd(mu1, a, mu2, b), rel=1e-7)


def test_frechet_distance_of_fewer_samples_than_dimensions_is_exact() -> None:
    # 6 samples in 16 dimensions: ±s_i along three axes, rotated. Their sample covariances are
    # exactly diag(2 s_i² / 5) in the rotated basis, of rank 3, so the closed form is known.
    d, q = 16, rotation(16, 4)
    s, t = np.array([1.0, 2.0, 0.5]), np.array([1.5, 0.7, 2.5])
    shift = np.random.default_rng(5).normal(size=d)

    def plus_minus(scales: np.ndarray, axes: list[int]) -> np.ndarray:
        rows = [
            sign * scale * np.eye(d)[axis]
            for scale, axis in zip(scales, axes, strict=True)
            for sign in (1, -1)
        ]
        return np.array(rows) @ q.T  # (6, 16)

    x, y = plus_minus(s, [0, 1, 2]), plus_minus(t, [1, 2, 3]) + shift
    var_x, var_y = np.zeros(d), np.zeros(d)
    var_x[[0, 1, 2]], var_y[[1, 2, 3]] = 2 * s**2 / 5, 2 * t**2 / 5
    expected = closed_form_fd(np.zeros(d), var_x, q.T @ shift, var_y)  # means in the q basis
    assert frechet_distance_between(x, y) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance_between(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_per_class_matches_each_class_by_hand() -> None:
    rng = np.random.default_rng(6)
    real, real_labels = rng.normal(size=(60, 4)), np.repeat([0, 1, 2], 20)
    fake = rng.normal(loc=0.5, size=(31, 4))
    fake_labels = np.array([0] * 15 + [1] * 15 + [2])  # class 2: one generated image only
    per_class = frechet_distance_per_class(
        real, real_labels, fake, fake_labels, class_names=["cat", "dog", "owl"]
    )
    assert set(per_class) == {"cat", "dog"}  # owl has no generated covariance: left out
    for label, name in ((0, "cat"), (1, "dog")):
        a, b = real[real_labels == label], fake[fake_labels == label]
        by_hand = frechet_distance(*feature_stats(a), *feature_stats(b))
        assert per_class[name] == pytest.approx(by_hand, rel=1e-12)
    assert set(frechet_distance_per_class(real, real_labels, fake, fake_labels)) == {"0", "1"}
    with pytest.raises(ValueError, match="labels"):
        frechet_distance_per_class(real, real_labels[:-1], fake, fake_labels)

    # each class's interval: around the same point, the same classes left out
    intervals = bootstrap_fd_per_class(
        real, real_labels, fake, fake_labels, ["cat", "dog", "owl"], Resampling(200, 0.9, 0)
    )
    assert set(intervals) == {"cat", "dog"}
    for name, estimate in intervals.items():
        assert estimate.point == pytest.approx(per_class[name], rel=1e-9)
        assert estimate.lo < estimate.point < estimate.hi and estimate.se > 0


# -- precision, recall, density, coverage -------------------------------------------------------


def test_identical_sets_have_full_precision_recall_and_coverage() -> None:
    real = np.random.default_rng(7).normal(size=(300, 8))
    scores = precision_recall_density_coverage(real, real.copy(), nearest_k=5)
    assert set(scores) == {"precision", "recall", "density", "coverage"}
    assert scores["precision"] == scores["recall"] == scores["coverage"] == 1.0
    assert scores["density"] > 0.5


def test_precision_and_recall_fall_for_shifted_or_collapsed_sets() -> None:
    rng = np.random.default_rng(8)
    real = rng.normal(size=(300, 8))
    shifted = precision_recall_density_coverage(real, rng.normal(size=(300, 8)) + 3.0, 5)
    assert shifted["precision"] < 0.1 and shifted["recall"] < 0.1 and shifted["coverage"] < 0.1
    # a generator stuck near the mode: what it makes looks real, but it misses most of the data
    collapsed = precision_recall_density_coverage(real, 0.2 * rng.normal(size=(300, 8)), 5)
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.5


def test_precision_recall_need_more_samples_than_neighbours() -> None:
    real = np.random.default_rng(9).normal(size=(6, 4))
    with pytest.raises(DataError, match="evaluate.nearest_k"):
        precision_recall_density_coverage(real, real, nearest_k=5)


# -- streaming features and the tokenizer-quality record ----------------------------------------


class MeanColour(torch.nn.Module):
    """A stand-in feature net: per-channel means, so the expected features are known."""

    name, dim = "mean_colour", 3

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the net a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + self.anchor


def test_extract_features_streams_uint8_and_float_batches_in_order() -> None:
    uint8 = np.random.default_rng(10).integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
    expected = uint8.reshape(10, -1, 3).mean(axis=1) / 127.5 - 1.0  # (10, 3)
    features = extract_features(MeanColour(), batches_of(uint8, 4))  # batches of 4, 4, 2
    assert features.dtype == np.float64 and features.shape == (10, 3)
    np.testing.assert_allclose(features, expected, atol=1e-6)
    floats = [
        torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1 for b in (uint8[:3], uint8[3:])
    ]
    np.testing.assert_allclose(extract_features(MeanColour(), floats), expected, atol=1e-6)
    with pytest.raises(ValueError, match="B, H, W, 3"):
        extract_features(MeanColour(), [uint8.transpose(0, 3, 1, 2)])


def test_tokenizer_quality_reads_the_flat_metrics() -> None:
    flat = {
        "psnr": 24.0,
        "ssim": 0.7,
        "perceptual_effnet_lite2": 0.3,
        "rfd_effnet_lite2": 12.0,
        "cka_dinov2_vitl14": 0.4,
        "val/l1": 0.1,
    }
    quality = TokenizerQuality.from_metrics(flat)
    assert (quality.perceptual, quality.perceptual_net) == (0.3, "effnet_lite2")
    assert (quality.rfd, quality.feature_net, quality.cka_foundation) == (
        12.0,
        "effnet_lite2",
        "dinov2_vitl14",
    )
    # written back under the same network-named keys
    assert quality.model_dump().items() >= {k: v for k, v in flat.items() if "/" not in k}.items()
    with pytest.raises(ValueError, match="perceptual"):
        TokenizerQuality.from_metrics(
            {k: v for k, v in flat.items() if k != "perceptual_effnet_lite2"}
        )
