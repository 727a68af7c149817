"""Which variants the trial can tell apart: paired verdicts, the top set, and the plan of a trial
that could decide what this one cannot.

A verdict compares two gFDs with a paired bootstrap (ldm/metrics/comparison.py), widened by the
retraining spread where one seed could not measure it (`compare_all`): "A better than B by d
[lo..hi]" when the interval excludes 0 and d reaches `report.min_effect` of A's gFD, else "no
detectable difference". That relation is not transitive (A ~ B and B ~ C while A beats C),
so the report states every verdict against one variant, the best: the *top set* is the best by
point estimate and every variant not detectably worse than it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations
from statistics import NormalDist

from ldm.errors import DataError
from ldm.report.features import ReportFeatures
from ldm.report.summary import Comparison, VariantSummary, fmt, usd
from ldm.report.text import percent


def z_of(level: float) -> float:
    """The two-sided normal quantile of a central interval of `level`, e.g. 1.645 at 0.9."""
    return NormalDist().inv_cdf((1.0 + level) / 2.0)


def widened(point: float, se: float, spread: float, level: float) -> tuple[float, float, float]:
    """(lo, hi, se) of a one-seed gap whose draws hold no retraining noise: `spread`, the
    retraining spread assumed for it, added in quadrature to the draws' `se`, and the interval
    point ± z·se at `level`."""
    total = math.hypot(se, spread)
    return point - z_of(level) * total, point + z_of(level) * total, total


def gap_text(c: Comparison) -> str:
    """`gFD gap 0.4 [-2.8..3.3]`, what the interval holds, and why it does not count when it
    does not."""
    text = f"gFD gap {fmt(c.gfd_difference)} [{fmt(c.lo)}..{fmt(c.hi)}]"
    if c.retraining_assumed:
        text += (
            f" with the retraining spread assumed (one seed; the images alone: "
            f"[{fmt(c.sampling_lo)}..{fmt(c.sampling_hi)}])"
        )
    if c.detectable:
        return text
    if c.gfd_difference < c.min_effect:
        share = f"{100 * c.min_effect_share:g} %"
        return f"{text}, below report.min_effect ({share} of the better gFD: {fmt(c.min_effect)})"
    return f"{text}, its {percent(c.level)} interval includes 0"


def verdict_text(c: Comparison) -> str:
    if c.detectable:
        return f"{c.better} better than {c.worse} by {gap_text(c).removeprefix('gFD gap ')} gFD"
    return f"no detectable difference between {c.better} and {c.worse}: {gap_text(c)}"


def compare_all(
    features: ReportFeatures,
    min_effect: float,
    seed_spread_prior: float | None,
    progress: Callable[[int], None],
) -> list[Comparison]:
    """Every pair of variants compared; `progress(1)` after each of the bootstrap's draws.

    With several seeds of both variants the paired draws resample seeds, then images: their
    interval holds both sources. With one seed, retraining's share is not in the draws, and a
    gap the images alone cannot explain may still be one retraining would undo (the FID Lottery
    measures retraining moving an FID 3x more than resampling does). So the verdict's interval
    then adds an assumed retraining spread s per variant (report.seed_spread_prior; by default
    one gFD's bootstrap spread): se = √(se_images² + s_a² + s_b²), the interval ± z·se.
    """
    from statistics import stdev

    from ldm.metrics.comparison import difference, kid_by_subset
    from ldm.metrics.uncertainty import KID_SUBSETS

    f, level = features, features.level
    found = f.joint_draws(progress)  # as merging the seeds drew them
    kids = kid_by_subset(f.val, f.variants, KID_SUBSETS, f.kid_subset_size, f.seed)

    def retraining(name: str) -> float:
        """One seed's spread of this variant's gFD: measured, else assumed."""
        seeds = found[name].seed_gfds
        if len(seeds) > 1:
            return stdev(seeds)
        if seed_spread_prior is not None:
            return seed_spread_prior
        return float(found[name].gfd_draws.std(ddof=1))

    comparisons = []
    for name_a, name_b in combinations(features.variants, 2):
        a, b = found[name_a], found[name_b]
        better, worse = (name_a, name_b) if a.gfd <= b.gfd else (name_b, name_a)
        gfd = difference(found[worse], found[better], "gfd", level)
        if gfd is None:
            raise DataError(f"report: the gFDs of {better} and {worse} are not finite")
        relative = difference(found[worse], found[better], "relative_fd", level)
        kid = kids[worse] - kids[better]
        threshold = min_effect * found[better].gfd
        spread = math.hypot(retraining(better), retraining(worse))
        assumed = min(len(a.seed_gfds), len(b.seed_gfds)) == 1
        lo, hi, se = gfd.lo, gfd.hi, gfd.se
        if assumed:  # widen by what the draws could not hold
            lo, hi, se = widened(gfd.point, gfd.se, spread, level)
        draft = Comparison(
            better=better,
            worse=worse,
            gfd_difference=gfd.point,
            lo=lo,
            hi=hi,
            se=se,
            level=level,
            min_effect=threshold,
            min_effect_share=min_effect,
            detectable=lo > 0 and gfd.point >= threshold,
            sampling_lo=gfd.lo,
            sampling_hi=gfd.hi,
            sampling_se=gfd.se,
            retraining_se=spread,
            retraining_assumed=assumed,
            relative_fd_difference=None if relative is None else relative.point,
            relative_fd_lo=None if relative is None else relative.lo,
            relative_fd_hi=None if relative is None else relative.hi,
            kid_difference=float(kid.mean()),
            kid_difference_std=float(kid.std(ddof=1)) if len(kid) > 1 else None,
            text="",
        )
        comparisons.append(draft.model_copy(update={"text": verdict_text(draft)}))
    return comparisons


def between(comparisons: list[Comparison], a: str, b: str) -> Comparison:
    for c in comparisons:
        if {c.better, c.worse} == {a, b}:
            return c
    raise KeyError(f"no comparison of {a} and {b}")


def top_set(candidates: list[VariantSummary], comparisons: list[Comparison]) -> list[str]:
    """The best candidate by gFD, then every candidate not detectably worse, best first."""
    if not candidates:
        return []
    ranked = sorted(candidates, key=lambda v: (v.gfd, v.usd))
    best = ranked[0].variant
    return [best] + [
        v.variant for v in ranked[1:] if not between(comparisons, best, v.variant).detectable
    ]


# The planner's model in general terms, for a page that shows several plans (each then names
# only its own s_w and S).
BRIEF_MODEL = (
    "n seeds per variant measure a gap to √(s_w² + S²/n), with s_w the evaluation's noise (the "
    "same images for every seed, so seeds do not average it) and S one seed's retraining spread "
    "of the gap, measured over the seeds or, with one seed, assumed (report.seed_spread_prior, "
    "by default one gFD's bootstrap spread)."
)


def plan(
    comparison: Comparison,
    better: VariantSummary,
    worse: VariantSummary,
    num_samples: int,
    brief: bool = False,
) -> str:
    """What a trial that tells these two apart would need and cost, in one paragraph.

    The model: the gap measured with n seeds per variant varies by √(s_w² + S²/n) around the
    true gap. S (`retraining_se`) is one seed's retraining spread of the gap; it averages out
    over seeds. s_w is the evaluation's own noise; it does not, as every seed is measured on
    the same validation images from the same noise. So the gap g excludes 0 at the interval's
    level once n ≥ z²·S² / (g² − z²·s_w²), and never while g ≤ z·s_w: then the evaluation
    itself must grow first.
    """
    g, m = comparison.gfd_difference, comparison.min_effect
    if g < m:
        return (
            f"The gFD gap between {better.variant} and {worse.variant} ({fmt(g)}) is below "
            f"report.min_effect ({fmt(m)}): retraining alone moves a gFD that much, so no "
            "budget makes it matter."
        )
    z, big_s, ran = z_of(comparison.level), comparison.retraining_se, min(better.seeds, worse.seeds)
    s_w = comparison.sampling_se
    if not comparison.retraining_assumed:  # the draws held the seeds: take their share out
        s_w = math.sqrt(max(comparison.sampling_se**2 - big_s**2 / ran, 0.0))
    source = (
        "assumed (one seed measures none: report.seed_spread_prior, by default one gFD's "
        "bootstrap spread)"
        if comparison.retraining_assumed
        else f"measured over {ran} seeds"
    )
    how = "assumed" if comparison.retraining_assumed else "measured"
    model = (
        f"(s_w = {fmt(s_w)}, S = {fmt(big_s)} {how})"
        if brief
        else f"Model: n seeds per variant measure the gap to √(s_w² + S²/n), with s_w = {fmt(s_w)} "
        f"the evaluation's noise (the same images for every seed, so seeds do not average it) "
        f"and S = {fmt(big_s)} one seed's retraining spread of the gap, {source}."
    )
    if g <= z * s_w:
        samples = math.ceil(num_samples * (z * s_w / g) ** 2)
        return (
            f"No number of seeds tells a gFD gap of {fmt(g)} between {better.variant} and "
            f"{worse.variant} from zero while the evaluation itself is this noisy: first about "
            f"{samples:,} generated images (evaluate.num_samples; more validation images help "
            f"too), then seeds. {model}"
        )
    seeds = max(2, math.ceil(z**2 * big_s**2 / (g**2 - (z * s_w) ** 2)))
    more = max(seeds - ran, 0)
    money = more * (better.per_seed_usd + worse.per_seed_usd)
    hours = more * (better.per_seed_compute_hours + worse.per_seed_compute_hours)
    unit = "GPU-hours" if better.compute_unit == "gpu_hours" else "CPU-hours"
    return (
        f"To tell a gFD gap of {fmt(g)} between {better.variant} and {worse.variant} from zero "
        f"at {percent(comparison.level)} needs about {seeds} training seeds per variant, "
        f"{more} more than this trial ran: ≈ {usd(money)} and {fmt(hours)} {unit} more for the "
        f"two on this machine (this trial's cost per variant and seed). A GPU host's preset "
        f"has other spreads (sample sizes, network, training): its own report plans its own "
        f"seeds. {model}"
    )


def compared(
    features: ReportFeatures, min_effect: float, seed_spread_prior: float | None
) -> list[Comparison]:
    """Every pairwise verdict, with a progress line over the bootstrap's draws."""
    from ldm.progress import progress_bar

    with progress_bar("paired comparisons", features.draws) as advance:
        return compare_all(features, min_effect, seed_spread_prior, advance)


def plan_for(
    outcome: str,
    top: list[str],
    variants: list[VariantSummary],
    comparisons: list[Comparison],
    num_samples: int,
) -> str | None:
    """After a tie: what it would take to tell the best from the closest of the others."""
    if outcome != "tie" or len(top) < 2:
        return None
    by_name = {v.variant: v for v in variants}
    best, closest = by_name[top[0]], by_name[top[1]]
    return plan(
        between(comparisons, best.variant, closest.variant),
        best,
        closest,
        num_samples,
    )
