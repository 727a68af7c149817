"""Which variants the trial can tell apart: paired verdicts, the top set, and the plan of a trial
that could decide what this one cannot.

A verdict compares two gFDs with a paired bootstrap (ldm/metrics/comparison.py): "A better than
B by d [lo..hi]" when the interval excludes 0 and d reaches `report.min_effect` of A's gFD, else
"no detectable difference". That relation is not transitive (A ~ B and B ~ C while A beats C),
so the report states every verdict against one variant, the best: the *top set* is the best by
point estimate and every variant not detectably worse than it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations
from statistics import NormalDist

from ldm.report.features import ReportFeatures
from ldm.report.summary import Comparison, VariantSummary, fmt, usd
from ldm.report.text import percent


def z_of(level: float) -> float:
    """The two-sided normal quantile of a central interval of `level`, e.g. 1.645 at 0.9."""
    return NormalDist().inv_cdf((1.0 + level) / 2.0)


def gap_text(c: Comparison) -> str:
    """`gFD gap 0.4 [-2.8..3.3]`, and why it does not count when it does not."""
    text = f"gFD gap {fmt(c.gfd_difference)} [{fmt(c.lo)}..{fmt(c.hi)}]"
    if c.detectable:
        return text
    if c.gfd_difference < c.min_effect:
        return f"{text}, below report.min_effect ({fmt(c.min_effect)})"
    return f"{text}, its {percent(c.level)} interval includes 0"


def verdict_text(c: Comparison) -> str:
    if c.detectable:
        interval = f"{fmt(c.gfd_difference)} [{fmt(c.lo)}..{fmt(c.hi)}]"
        return f"{c.better} better than {c.worse} by {interval} gFD"
    return f"no detectable difference between {c.better} and {c.worse}: {gap_text(c)}"


def compare_all(
    features: ReportFeatures, min_effect: float, progress: Callable[[int], None]
) -> tuple[list[Comparison], dict[str, tuple[float, ...]]]:
    """Every pair of variants compared; and each variant's gFD per training seed.
    `progress(1)` after each of the bootstrap's draws."""
    from ldm.metrics.bootstrap import Resampling
    from ldm.metrics.comparison import difference, joint_draws, kid_by_subset
    from ldm.metrics.uncertainty import KID_SUBSETS

    f, level = features, features.level
    resampling = Resampling(f.draws, level, f.seed)
    found = joint_draws(f.val, f.train, f.variants, resampling, progress)
    kids = kid_by_subset(f.val, f.variants, KID_SUBSETS, f.kid_subset_size, f.seed)
    comparisons = []
    for name_a, name_b in combinations(features.variants, 2):
        a, b = found[name_a], found[name_b]
        better, worse = (name_a, name_b) if a.gfd <= b.gfd else (name_b, name_a)
        gfd = difference(found[worse], found[better], "gfd", level)
        relative = difference(found[worse], found[better], "relative_fd", level)
        kid = kids[worse] - kids[better]
        threshold = min_effect * found[better].gfd
        draft = Comparison(
            better=better,
            worse=worse,
            gfd_difference=gfd.point,
            lo=gfd.lo,
            hi=gfd.hi,
            se=gfd.se,
            level=level,
            min_effect=threshold,
            detectable=gfd.lo > 0 and gfd.point >= threshold,
            relative_fd_difference=None if relative is None else relative.point,
            relative_fd_lo=None if relative is None else relative.lo,
            relative_fd_hi=None if relative is None else relative.hi,
            kid_difference=float(kid.mean()),
            kid_difference_std=float(kid.std(ddof=1)) if len(kid) > 1 else None,
            text="",
        )
        comparisons.append(draft.model_copy(update={"text": verdict_text(draft)}))
    return comparisons, {name: v.seed_gfds for name, v in found.items()}


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


def plan(
    comparison: Comparison,
    better: VariantSummary,
    worse: VariantSummary,
    seed_spread_prior: float | None,
    num_samples: int,
) -> str:
    """What a trial that tells these two apart would need and cost, in one paragraph.

    The model: each training seed gives a paired gFD gap that varies by σ = √(2·s_b² + s_w²)
    around the true gap (s_b: one variant's gFD spread over seeds, twice for two variants;
    s_w: the bootstrap spread of the paired gap at this sample size); the mean over n seeds
    varies by σ/√n, so the gap g excludes 0 at the interval's level once n ≥ (z·σ / g)².
    """
    g, m = comparison.gfd_difference, comparison.min_effect
    if g < m:
        return (
            f"The gFD gap between {better.variant} and {worse.variant} ({fmt(g)}) is below "
            f"report.min_effect ({fmt(m)}): retraining alone moves a gFD that much, so no "
            "budget makes it matter."
        )
    s_w = comparison.se
    measured = [v.seed_spread for v in (better, worse) if v.seed_spread is not None]
    if measured:
        s_b = math.sqrt(sum(s * s for s in measured) / len(measured))
        source = f"s_b = {fmt(s_b)} measured over {min(better.seeds, worse.seeds)} seeds"
    elif seed_spread_prior is not None:
        s_b = seed_spread_prior
        source = f"s_b = {fmt(s_b)} assumed (report.seed_spread_prior; one seed measures none)"
    else:
        s_b = better.intervals["gfd"].se if "gfd" in better.intervals else s_w
        source = (
            f"s_b = {fmt(s_b)} assumed equal to the within-seed spread of one gFD (one seed "
            "measures no retraining spread; set report.seed_spread_prior to change it)"
        )
    z = z_of(comparison.level)
    sigma = math.sqrt(2 * s_b**2 + s_w**2)
    seeds = max(2, math.ceil((z * sigma / g) ** 2)) if g > 0 else None
    if seeds is None:
        return f"{better.variant} and {worse.variant} score the same gFD: nothing to decide."
    money = seeds * (better.per_seed_usd + worse.per_seed_usd)
    hours = seeds * (better.per_seed_compute_hours + worse.per_seed_compute_hours)
    unit = "GPU-hours" if better.compute_unit == "gpu_hours" else "CPU-hours"
    text = (
        f"To tell a gFD gap of {fmt(g)} ± {fmt(s_w)} between {better.variant} and "
        f"{worse.variant} from zero at {percent(comparison.level)} needs about {seeds} training "
        f"seeds per variant: ≈ {usd(money)} and {fmt(hours)} {unit} for the two on this "
        f"machine (this trial's cost per variant and seed). On a GPU "
        f"host the seed count holds; one seed's GPU-hours there come from its own trial. Model: "
        f"each seed's paired gap varies by √(2·s_b² + s_w²) = {fmt(sigma)}, with s_w = "
        f"{fmt(s_w)} from the bootstrap and {source}; n seeds ≥ (z·σ/gap)²."
    )
    rows_only = (g / z) ** 2 - 2 * s_b**2
    if rows_only > 0:
        samples = math.ceil(num_samples * s_w**2 / rows_only)
        text += (
            f" At one seed, about {samples:,} generated samples (evaluate.num_samples) would "
            "do, if the assumed s_b holds."
        )
    else:
        text += " More generated samples alone cannot decide: they shrink only s_w."
    return text


def compared(
    variants: list[VariantSummary], features: ReportFeatures, min_effect: float
) -> tuple[list[VariantSummary], list[Comparison]]:
    """The variants completed with their seed counts and spreads, and every pairwise verdict."""
    from statistics import stdev

    from ldm.progress import progress_bar

    with progress_bar("paired comparisons", features.draws) as advance:
        comparisons, seed_gfds = compare_all(features, min_effect, advance)
    completed = []
    for v in variants:
        gfds = seed_gfds[v.variant]
        spread = stdev(gfds) if len(gfds) > 1 else None
        completed.append(v.model_copy(update={"seeds": len(gfds), "seed_spread": spread}))
    return completed, comparisons


def plan_for(
    outcome: str,
    top: list[str],
    variants: list[VariantSummary],
    comparisons: list[Comparison],
    seed_spread_prior: float | None,
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
        seed_spread_prior,
        num_samples,
    )
