"""Frechet distance between feature sets, overall and per class.

A Frechet distance is only comparable within one feature network, so it is named after it
(`metric_name`): only Inception features make a number an FID.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MIN_CLASS_SAMPLES = 2  # a covariance needs two samples; fewer and a class is left out


def metric_name(feature_name: str) -> str:
    """fd_<network>: a Frechet distance is only comparable within one feature network."""
    return f"fd_{feature_name}"


def as_features(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, D) features as a float64 numpy array."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else features
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    return f


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features, N >= 2 -> mean (D,) and covariance (D, D), float64."""
    f = as_features(features)
    if len(f) < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {len(f)}")
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

    Ours, not pytorch-fid's: the trace of (Σ1 Σ2)^½ is taken through the symmetric form
    Σ1^½ Σ2 Σ1^½, whose eigenvalues are real and non-negative. That stays exact and real when
    there are fewer samples than feature dimensions (singular covariances), where a general
    matrix square root of Σ1 Σ2, as pytorch-fid takes it, returns complex noise.
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


def frechet_distance_between(
    real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray
) -> float:
    """Frechet distance between two (N, D) feature sets."""
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def frechet_distance_per_class(
    real: torch.Tensor | np.ndarray,
    real_labels: np.ndarray,
    fake: torch.Tensor | np.ndarray,
    fake_labels: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Frechet distance of each class's generated features against its real ones.

    Keys are `class_names[label]` (or the label as text). A class with fewer than
    MIN_CLASS_SAMPLES vectors on either side is left out: it has no covariance. Few samples per
    class bias an FD upwards, so compare these only between runs with the same class sizes.
    """
    real, fake = as_features(real), as_features(fake)
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    if len(real_labels) != len(real) or len(fake_labels) != len(fake):
        raise ValueError(
            f"labels do not match the features: {len(real_labels)} labels for {len(real)} real, "
            f"{len(fake_labels)} labels for {len(fake)} generated vectors"
        )
    distances = {}
    for label in np.union1d(real_labels, fake_labels):
        a, b = real[real_labels == label], fake[fake_labels == label]
        if min(len(a), len(b)) < MIN_CLASS_SAMPLES:
            continue
        key = class_names[int(label)] if class_names is not None else str(label)
        distances[key] = frechet_distance_between(a, b)
    return distances
