"""How much generator compute a variant would need to reach the target gFD.

The model: FD(c) = floor + a * c^(-b), with c the cumulative DiT compute and floor = the
train-vs-val FD (what a perfect generator scores). Subtracting the floor makes it a straight line
in log-log space, log(FD - floor) = log a - b log c, fitted by ordinary least squares; the
noise is taken as multiplicative (constant in log space). The interval comes from the
parameters' least-squares uncertainty: draws from a Student-t with n - 2 degrees of freedom
around the fit, each turned into the compute at which its curve meets the target. A closed form
(the delta method) would miss that c* = (a / (target - floor))^(1/b) blows up as b nears 0,
which is exactly where a short curve leaves the answer open.

The curve's points have fewer samples than the evaluation, and an FD of fewer rows reads higher.
A curve that records its own floor (at its sample size) is fitted against that floor and meets
the target moved to its sample size by how much higher the final generator reads there
(`curve_size_shift`): points, floor and target are then FDs of as many rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ldm.records import ConvergenceCurve
from ldm.report.summary import Projection, fmt, usd

if TYPE_CHECKING:
    import numpy as np

MIN_POINTS = 3  # two parameters and at least one degree of freedom for their uncertainty
INTERVAL = 0.8  # central share of the draws shown as the interval
DRAWS = 4000
SEED = 0  # the interval is part of a versioned report: the same curve gives the same numbers
UNITS = {"gpu_hours": "GPU-hours", "cpu_hours": "CPU-hours"}
# Subsets of the final generator's rows averaged into its FD at a curve's sample size: the FD of
# one subset of 48 of 256 rows varies by about 2 % or less, the mean of 50 by under 0.3 %.
SHIFT_SUBSETS = 50


@dataclass(frozen=True)
class PowerLawFit:
    floor: float
    log_a: float
    b: float
    cov: tuple[tuple[float, float], tuple[float, float]]  # of (log a, b)
    n_points: int

    @property
    def a(self) -> float:
        return math.exp(self.log_a)

    @property
    def b_stderr(self) -> float:
        return math.sqrt(max(self.cov[1][1], 0.0))

    def compute_to_reach(self, target: float) -> float:
        """c at which FD(c) = target; inf when the curve never gets there."""
        if self.b <= 0:
            return math.inf
        exponent = (self.log_a - math.log(target - self.floor)) / self.b
        return math.exp(exponent) if exponent < 700 else math.inf


def fit_power_law(compute: list[float], fd: list[float], floor: float) -> PowerLawFit | None:
    """Least squares of log(FD - floor) on log c; None with fewer than MIN_POINTS usable points.

    A point is usable when its compute is positive and its FD lies above the floor (the log of
    the gap must exist); a curve that touches the floor has nothing left to project anyway.
    """
    import numpy as np

    c, f = np.asarray(compute, dtype=float), np.asarray(fd, dtype=float)
    keep = (c > 0) & (f > floor)
    c, f = c[keep], f[keep]
    if len(c) < MIN_POINTS or np.ptp(np.log(c)) == 0:
        return None
    design = np.stack([np.ones_like(c), -np.log(c)], axis=1)  # (n, 2): log a, b
    y = np.log(f - floor)
    params, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(y) - 2
    residual_var = float(np.sum((y - design @ params) ** 2)) / dof
    cov = residual_var * np.linalg.inv(design.T @ design)
    return PowerLawFit(
        floor=floor,
        log_a=float(params[0]),
        b=float(params[1]),
        cov=((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
        n_points=len(y),
    )


def compute_interval(fit: PowerLawFit, target: float) -> tuple[float, float]:
    """The central INTERVAL of the compute at which the fitted curve reaches `target`."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    dof = fit.n_points - 2
    chol = np.linalg.cholesky(np.asarray(fit.cov) + 1e-18 * np.eye(2))
    normal = rng.standard_normal((DRAWS, 2)) @ chol.T  # (DRAWS, 2)
    scale = np.sqrt(rng.chisquare(dof, DRAWS) / dof)[:, None]
    log_a, b = (np.array([fit.log_a, fit.b]) + normal / scale).T
    log_gap = math.log(target - fit.floor)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        exponent = np.where(b > 0, (log_a - log_gap) / b, np.inf)
    # inf for the draws that never get there
    reach = np.sort(np.where(exponent < 700, np.exp(np.minimum(exponent, 700.0)), np.inf))
    tail = (1 - INTERVAL) / 2
    low = reach[int(math.floor(tail * (DRAWS - 1)))]
    high = reach[int(math.ceil((1 - tail) * (DRAWS - 1)))]
    return float(low), float(high)


def curve_size_shift(
    curve: ConvergenceCurve, val: np.ndarray, generated: np.ndarray
) -> float | None:
    """How much higher the final generator's FD reads at the curve's sample size than on all of
    its `generated` rows: the mean FD of SHIFT_SUBSETS `curve.num_samples`-row subsets of them,
    minus the FD of all of them (the evaluation's gFD), both against the whole `val`.

    None where there is nothing to compare at the curve's size: a curve from before its own
    floor, or an evaluation with fewer rows than a curve point.
    """
    if curve.floor is None or curve.num_samples > len(generated):
        return None
    from ldm.metrics.frechet import frechet_distance_between
    from ldm.metrics.uncertainty import mean_fd_of_subsets

    at_curve_size = mean_fd_of_subsets(val, generated, curve.num_samples, SHIFT_SUBSETS, SEED)
    return at_curve_size - frechet_distance_between(val, generated)


def project(
    curve: ConvergenceCurve,
    floor: float,
    target_fd: float,
    price_per_hour: float,
    budget_multiple: float,
    final_fd: float | None = None,
    target_shift: float | None = None,
) -> Projection:
    """Whether, and at what compute and money, the variant's generator reaches `target_fd`.

    `floor`, `target_fd` and `final_fd` (the evaluation's gFD of the trained generator) are at
    the evaluation's sample size; `final_fd` may meet the target where the curve does not yet.
    A curve point has fewer samples, and an FD of fewer rows reads higher. So where the curve
    carries its own floor (at its sample size) and `target_shift` is given (`curve_size_shift`),
    its points are fitted against that floor and compared with `target_fd + target_shift`, the
    target at their sample size. Otherwise (a curve from before its floor) they are compared
    with `floor` and `target_fd`, which errs towards more compute, and the text says so.
    """
    unit = UNITS.get(curve.compute_unit, curve.compute_unit)
    spent = max((p.compute_hours for p in curve.points), default=0.0)
    limit = budget_multiple * spent
    n = curve.num_samples
    same_size = curve.floor is not None and target_shift is not None
    curve_floor = curve.floor if same_size else floor
    target = target_fd + target_shift if same_size else target_fd
    base = {
        "compute_unit": curve.compute_unit,
        "price_per_hour": price_per_hour,
        "spent_compute_hours": spent,
        "limit_compute_hours": limit,
        "target_fd": target_fd,
        "floor": curve_floor,
        "sample_size": n,
        "target_at_sample_size": target if same_size else None,
    }
    not_reached = f"not reached within {budget_multiple:g}× this budget"
    target_text = f"{fmt(target)}, the target moved to N = {n}" if same_size else fmt(target_fd)
    caveat = (
        ""
        if same_size
        else f"; the curve's points (N = {n}) are compared with the floor and target of the "
        "evaluation's larger sample, which errs towards more compute"
    )

    reached = [p for p in curve.points if p.fd <= target]
    if reached or (final_fd is not None and final_fd <= target_fd):
        if reached:
            first = min(reached, key=lambda p: p.compute_hours)
            at = first.compute_hours
            text = f"reached: gFD {fmt(first.fd)} at step {first.step} ≤ {target_text}"
        else:
            at, caveat = spent, ""  # evaluation against evaluation: like with like
            text = f"reached: the evaluated gFD {fmt(final_fd)} at the end of training"
            text += f" ≤ {fmt(target_fd)}"
        text += f", after {fmt(at)} {unit} ({usd(at * price_per_hour)}){caveat}"
        return Projection(
            status="reached",
            text=text,
            n_points=len(curve.points),
            compute_hours=at,
            usd=at * price_per_hour,
            **base,
        )
    if target <= curve_floor:
        text = (
            f"{not_reached}: the target {target_text} lies at or below the floor "
            f"{fmt(curve_floor)}, the FD between two samples of the real images themselves"
        )
        return Projection(status="not_reached", text=text + caveat, n_points=0, **base)

    fit = fit_power_law(
        [p.compute_hours for p in curve.points], [p.fd for p in curve.points], curve_floor
    )
    if fit is None:
        usable = sum(1 for p in curve.points if p.compute_hours > 0 and p.fd > curve_floor)
        text = f"too few points to project ({usable} usable, {MIN_POINTS} needed)"
        return Projection(status="too_few_points", text=text, n_points=usable, **base)

    params = {"n_points": fit.n_points, "a": fit.a, "b": fit.b, "b_stderr": fit.b_stderr}
    if fit.b <= 0:
        text = f"{not_reached}: the fitted curve is flat or rising (b = {fit.b:.2g})"
        return Projection(status="not_reached", text=text + caveat, **params, **base)

    central = fit.compute_to_reach(target)
    low, high = compute_interval(fit, target)
    if central > limit:
        needs = f"about {fmt(central)} {unit}, " if math.isfinite(central) else ""
        text = (
            f"{not_reached}: the fit needs {needs}"
            f"more than {budget_multiple:g}× the {fmt(spent)} {unit} spent"
        )
        low = low if low <= limit else None
        return Projection(
            status="not_reached", text=text + caveat, compute_low=low, **params, **base
        )

    high_shown = high if high <= limit else None
    interval = (
        f"{fmt(low)}–{fmt(high_shown)}" if high_shown else f"{fmt(low)} to beyond {fmt(limit)}"
    )
    text = (
        f"about {fmt(central)} {unit} of DiT training in all ({usd(central * price_per_hour)}), "
        f"{fmt(max(central - spent, 0.0))} more than this trial's; "
        f"{int(INTERVAL * 100)}% interval {interval} {unit}"
    )
    return Projection(
        status="projected",
        text=text + caveat,
        compute_hours=central,
        compute_low=low,
        compute_high=high_shown,
        usd=central * price_per_hour,
        usd_low=low * price_per_hour,
        usd_high=None if high_shown is None else high_shown * price_per_hour,
        **params,
        **base,
    )
