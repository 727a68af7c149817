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
    """Frechet distance between two (N, D) feature sets.

    With fewer rows than dimensions on either side it is taken from the rows themselves
    (`frechet_distance_of_rows`: the same number, exactly, in a fraction of the time); otherwise
    from the two covariances.
    """
    a, b = as_features(real), as_features(fake)
    if min(len(a), len(b)) < a.shape[1]:
        return frechet_distance_of_rows(a, b)
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def check_row_sets(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in width: {a.shape[1]} vs {b.shape[1]}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {len(a)}, {len(b)}")


def covariance_factor(rows: np.ndarray) -> np.ndarray:
    """F with FᵀF = the rows' sample covariance: the centred rows over √(N - 1)."""
    return (rows - rows.mean(axis=0)) / np.sqrt(len(rows) - 1)


def nuclear_norm(m: np.ndarray) -> float:
    """Sum of the singular values (an SVD is backward stable: no square roots of round-off)."""
    return float(np.linalg.svd(m, compute_uv=False).sum())


def frechet_distance_of_rows(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance of two (N, D) row sets through the small N1 × N2 matrix A Bᵀ.

    Exact, not an approximation. With A, B the rows minus their means over √(N - 1), the
    covariances are Σ1 = AᵀA and Σ2 = BᵀB, and Σ1 Σ2 = Aᵀ(A Bᵀ)B has the non-zero eigenvalues
    of (A Bᵀ)(A Bᵀ)ᵀ, the squared singular values of M = A Bᵀ. So Tr((Σ1 Σ2)^½) is M's nuclear
    norm, and Tr(Σ1) = ‖A‖²_F, Tr(Σ2) = ‖B‖²_F. No D × D matrix is formed: with N < D this
    costs N1·N2·D plus an SVD of N1 × N2, where the covariance route takes two D × D
    eigendecompositions. Valid for any N; cheaper while min(N1, N2) < D.
    """
    a, b = as_features(a), as_features(b)
    check_row_sets(a, b)
    fa, fb = covariance_factor(a), covariance_factor(b)
    diff = a.mean(axis=0) - b.mean(axis=0)
    distance = diff @ diff + (fa * fa).sum() + (fb * fb).sum() - 2.0 * nuclear_norm(fa @ fb.T)
    return float(max(distance, 0.0))


class ResampledFrechet:
    """Frechet distance between resamples of two fixed (N, D) row sets, draw after draw.

    `fd(rows_a, rows_b)` equals `frechet_distance_between(a[rows_a], b[rows_b])` (row indices,
    repeats allowed, as a bootstrap draws them) without touching a D × D matrix when
    min(N1, N2) < D. The cross Gram matrix G = a_c b_cᵀ of the rows centred on their full-set
    means is formed once; a draw gathers the block of its distinct rows, centres it on the
    draw's own means (G_ij - x_i·ȳ - x̄·y_j + x̄·ȳ, all read off G and the weights), scales
    row and column by √(times drawn) and takes the nuclear norm of that block. A row drawn w
    times adds w·xxᵀ to the covariance, as √w·x does once, so the singular values are exact.
    Centring on the full-set means first keeps G's entries at the spread's scale, so the
    per-draw centring loses no digits to a large common mean.
    """

    def __init__(self, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> None:
        a, b = as_features(a), as_features(b)
        check_row_sets(a, b)
        self.a, self.b = a, b
        self.low_rank = min(len(a), len(b)) < a.shape[1]
        if self.low_rank:
            self.mean_diff = a.mean(axis=0) - b.mean(axis=0)
            self.a_c, self.b_c = a - a.mean(axis=0), b - b.mean(axis=0)
            self.cross = self.a_c @ self.b_c.T  # (N1, N2)
            self.sq_a = np.einsum("ij,ij->i", self.a_c, self.a_c)  # ‖x_i‖², (N1,)
            self.sq_b = np.einsum("ij,ij->i", self.b_c, self.b_c)

    def __call__(self, rows_a: np.ndarray, rows_b: np.ndarray) -> float:
        if not self.low_rank:  # D × D is the smaller problem
            return frechet_distance(*feature_stats(self.a[rows_a]), *feature_stats(self.b[rows_b]))
        n1, n2 = len(rows_a), len(rows_b)
        if min(n1, n2) < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {n1}, {n2}")
        ia, wa = distinct_with_counts(rows_a, len(self.a))
        ib, wb = distinct_with_counts(rows_b, len(self.b))
        mean_a, mean_b = wa @ self.a_c[ia] / n1, wb @ self.b_c[ib] / n2  # the draw's means
        diff = self.mean_diff + mean_a - mean_b
        trace_a = (wa @ self.sq_a[ia] - n1 * (mean_a @ mean_a)) / (n1 - 1)
        trace_b = (wb @ self.sq_b[ib] - n2 * (mean_b @ mean_b)) / (n2 - 1)
        g = self.cross[np.ix_(ia, ib)]
        row, col = g @ wb / n2, wa @ g / n1  # x_i·ȳ and x̄·y_j
        centred = g - row[:, None] - col[None, :] + (wa @ row) / n1
        m = np.sqrt(wa)[:, None] * centred * np.sqrt(wb)[None, :] / np.sqrt((n1 - 1) * (n2 - 1))
        distance = diff @ diff + trace_a + trace_b - 2.0 * nuclear_norm(m)
        return float(max(distance, 0.0))


def distinct_with_counts(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct row indices (sorted) and how often each was drawn, as float64."""
    counts = np.bincount(np.asarray(rows), minlength=n)
    distinct = np.flatnonzero(counts)
    return distinct, counts[distinct].astype(np.float64)


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
