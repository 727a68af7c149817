"""The feature rows the report resamples: kept by `reference` and `evaluate`, never recomputed.

Comparing variants needs the rows behind each gFD, not only the numbers: a paired bootstrap
draws the same val rows for both terms of a difference, so the shared reference's noise cancels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from ldm.metrics.comparison import Replicate  # numpy and torch: the CLI does not load them


@dataclass(frozen=True)
class ReportFeatures:
    """Every set behind the trial's generation numbers, in the evaluation's feature network."""

    network: str
    val: np.ndarray  # the reference every FD is measured against
    train: np.ndarray  # the floor's rows
    variants: dict[str, tuple[Replicate, ...]]  # one replicate per training seed
    # how to resample them: the evaluations' own bootstrap (so the report's intervals and the
    # records' agree) and evaluate.kid_subset_size
    draws: int
    level: float
    seed: int
    kid_subset_size: int
