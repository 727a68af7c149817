"""The feature rows the report resamples: kept by `reference` and `evaluate`, never recomputed.

Comparing variants needs the rows behind each gFD, not only the numbers: a paired bootstrap
draws the same val rows for both terms of a difference, so the shared reference's noise cancels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    # numpy and torch: the CLI does not load them
    from ldm.metrics.comparison import Replicate, VariantDraws


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
    # what was computed from the rows, once per report (they never change)
    _computed: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def joint_draws(
        self, progress: Callable[[int], None] = lambda n: None
    ) -> dict[str, VariantDraws]:
        """Every variant's gFD and relative FD in the evaluations' bootstrap, seeds then rows
        (`ldm.metrics.comparison.joint_draws`): merging a variant's seeds and the verdicts read
        the same draws, so they are drawn once, by whichever asks first. `progress(1)` after
        each draw; at once, all of them, when they were drawn before."""
        if "joint" in self._computed:
            progress(self.draws)
        else:
            from ldm.metrics.bootstrap import Resampling
            from ldm.metrics.comparison import joint_draws

            resampling = Resampling(self.draws, self.level, self.seed)
            self._computed["joint"] = joint_draws(
                self.val, self.train, self.variants, resampling, progress
            )
        return self._computed["joint"]
