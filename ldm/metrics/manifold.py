"""Precision, recall, density and coverage: how much of each set lies on the other's manifold.

Each set's manifold is the union of balls around its points, each reaching the point's k-th
nearest neighbour in the same set. Precision (Kynkäänniemi et al. 2019) is the share of
generated points inside the real manifold, recall the share of real points inside the generated
one; density and coverage (Naeem et al. 2020) count real balls per generated point (may exceed 1)
and the share of real balls holding a generated point.

Computed by clovaai's `prdc`, the reference code of Naeem et al.; its formulas match both papers
and the k-th neighbour excludes the point itself. One difference from Kynkäänniemi et al.'s code:
a point on a ball's boundary counts as outside (`<`, theirs `<=`), which matters only for exact
ties such as duplicate images. It holds N x M distance matrices in memory (10k x 10k float64:
0.8 GB each).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from ldm.errors import DataError
from ldm.metrics.frechet import as_features


def precision_recall_density_coverage(
    real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, nearest_k: int
) -> dict[str, float]:
    """{"precision", "recall", "density", "coverage"} of generated `fake` against `real` (N, D)."""
    from prdc import compute_prdc

    real, fake = as_features(real), as_features(fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    if nearest_k < 1:
        raise ValueError(f"nearest_k must be at least 1, got {nearest_k}")
    if min(len(real), len(fake)) < nearest_k + 2:
        # prdc's k-th neighbour search needs k + 1 others besides the point itself. A setting
        # (or a tiny val split) the user can change: a clear message, not a traceback and retries.
        raise DataError(
            f"precision/recall with nearest_k={nearest_k} need at least {nearest_k + 2} real and "
            f"generated vectors, got {len(real)} and {len(fake)}; lower evaluate.nearest_k or "
            "raise evaluate.num_samples"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        values = compute_prdc(real_features=real, fake_features=fake, nearest_k=nearest_k)
    return {name: float(values[name]) for name in ("precision", "recall", "density", "coverage")}
