"""A variant's cells (one per training seed) merged into one evaluation record for the report.

With one seed the cell's own record is the variant's, unchanged. With several, every number is
the mean over the seeds, its standard deviation over them is kept beside it (`seed_spread`),
and the intervals say how sure the mean is:
- gFD and relative FD: the joint bootstrap of ldm/metrics/comparison.py, which resamples the
  seeds and then the rows in every draw, so the interval holds both sources of noise:
  retraining and sampling;
- every other number: its typical within-seed interval, each seed's offsets from its own point
  averaged and put around the mean (the spread over seeds stands beside it);
- the latent diagnostics' noisy rFDs: that typical interval widened by the seeds' spread
  (`_diagnostics` says why they differ from the numbers above).
The cost is the shared stages once and every cell's own stages: what the variant's seeds cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import isfinite, sqrt
from statistics import NormalDist, fmean, stdev
from typing import TYPE_CHECKING

from ldm.records import (
    EvaluateRecord,
    GenerationQuality,
    Interval,
    LatentDiagnostics,
    SamplingSpeed,
    Uncertainty,
    VariantCost,
    total_cost,
)
from ldm.report.features import ReportFeatures

if TYPE_CHECKING:
    import numpy as np  # the CLI reads summaries without loading numpy

# The numbers whose standard deviation over seeds the report shows, by their record names.
GENERATION_SPREAD = ("fd", "precision", "recall", "density", "coverage", "kid", "fd_infinity")
TOKENIZER_SPREAD = ("psnr", "ssim", "perceptual", "rfd", "cka")


def merge_cells(
    cells: dict[str, list[EvaluateRecord]], features: ReportFeatures
) -> list[EvaluateRecord]:
    """One record per variant, in the order of `cells` (variant -> its cells' records, in the
    order of `features.variants[variant]`'s replicates)."""
    from ldm.progress import progress_bar

    found = {}
    if any(len(records) > 1 for records in cells.values()):
        with progress_bar("seeds and rows resampled", features.draws) as advance:
            found = features.joint_draws(advance)  # the verdicts' draws too
    merged = []
    for name, records in cells.items():
        if len(records) == 1:
            merged.append(records[0])
            continue
        draws = found[name]
        merged.append(merge(records, {"fd": draws.gfd_draws, "relative_fd": draws.relative_draws}))
    return merged


def merge(
    records: Sequence[EvaluateRecord], joint: dict[str, np.ndarray] | None = None
) -> EvaluateRecord:
    """Several seeds' records of one variant as one: means, spreads over seeds, and intervals
    (`joint`: number -> its seeds-then-rows bootstrap draws; other numbers: the typical
    within-seed interval)."""
    first = records[0]
    if len({r.variant for r in records}) != 1:
        raise ValueError(f"one variant's seeds only, got {sorted({r.cell for r in records})}")
    tokenizer = first.tokenizer.model_copy(
        update={k: fmean(getattr(r.tokenizer, k) for r in records) for k in TOKENIZER_SPREAD}
    )
    generation = _generation([r.generation for r in records])
    reference = first.reference.model_copy(
        update={
            "fd_train_val": fmean(r.reference.fd_train_val for r in records),
            "fd_random_latents": fmean(r.reference.fd_random_latents for r in records),
        }
    )
    relatives = [r.reference.relative(r.generation.fd) for r in records]
    spread = {k: _sd([getattr(r.tokenizer, k) for r in records]) for k in TOKENIZER_SPREAD}
    for key in GENERATION_SPREAD:
        values = [getattr(r.generation, key) for r in records]
        if all(v is not None for v in values):
            spread[key] = _sd(values)
    if all(isfinite(x) for x in relatives):  # infinite where a ceiling met its floor
        spread["relative_fd"] = _sd(relatives)
    spread["fd_random_latents"] = _sd([r.reference.fd_random_latents for r in records])
    points = {
        "fd": generation.fd,
        "relative_fd": reference.relative(generation.fd),
        "fd_train_val": reference.fd_train_val,
        "fd_random_latents": reference.fd_random_latents,
        **{k: getattr(generation, k) for k in ("precision", "recall", "density", "coverage")},
    }
    stages = {name: cost for r in records for name, cost in r.cost.stages.items()}
    diagnostics, diagnostics_spread = _diagnostics(records)
    spread |= diagnostics_spread
    return first.model_copy(
        update={
            "tokenizer": tokenizer,
            "generation": generation,
            "reference": reference,
            "speed": _speed([r.speed for r in records], generation.cfg_scale),
            "cost": VariantCost(total=total_cost(list(stages.values())), stages=stages),
            "self_graded": any(r.self_graded for r in records),
            "uncertainty": _uncertainty(records, points, joint or {}),
            "diagnostics": diagnostics,
            "merged_seeds": [r.seed for r in records],
            "seed_spread": spread,
        }
    )


def _sd(values: Sequence[float]) -> float:
    return stdev(values) if len(values) > 1 else 0.0


def _mean_of_dicts(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each key the dicts all hold (the same classes, the same scales)."""
    keys = [k for k in dicts[0] if all(k in d for d in dicts)]
    return {k: fmean(d[k] for d in dicts) for k in keys}


def _generation(found: Sequence[GenerationQuality]) -> GenerationQuality:
    first = found[0]
    means = {
        k: fmean(getattr(g, k) for g in found)
        for k in ("fd", "precision", "recall", "density", "coverage")
    }
    for key in ("fd_infinity", "kid", "kid_std"):
        values = [getattr(g, key) for g in found]
        means[key] = None if any(v is None for v in values) else fmean(values)
    # Each seed chose its own guidance: the report names the scale most of them chose (the
    # lower on a tie); each cell's generator is registered with its own.
    scales = Counter(g.cfg_scale for g in found if g.cfg_scale is not None)
    top = max(scales.values(), default=0)
    means["cfg_scale"] = min((s for s, n in scales.items() if n == top), default=None)
    for key in ("cfg_selection", "fd_per_class"):
        dicts = [getattr(g, key) for g in found]
        means[key] = None if any(d is None for d in dicts) else _mean_of_dicts(dicts)
    return first.model_copy(update=means)


def _speed(found: Sequence[SamplingSpeed], cfg_scale: float | None) -> SamplingSpeed:
    rates = ("sample_images_per_second", "encode_images_per_second", "decode_images_per_second")
    update = {k: fmean(getattr(s, k) for s in found) for k in rates}
    if cfg_scale is not None:
        update["cfg_scale"] = cfg_scale
    return found[0].model_copy(update=update)


def _typical(intervals: Sequence[Interval], points: Sequence[float], mean: float) -> Interval:
    """Each seed's interval as offsets from its own point, averaged, around `mean`."""
    return Interval(
        se=fmean(i.se for i in intervals),
        lo=mean + fmean(i.lo - p for i, p in zip(intervals, points, strict=True)),
        hi=mean + fmean(i.hi - p for i, p in zip(intervals, points, strict=True)),
        bias=fmean(i.bias for i in intervals),
    )


def _uncertainty(
    records: Sequence[EvaluateRecord], points: dict[str, float], joint: dict[str, np.ndarray]
) -> Uncertainty | None:
    import numpy as np

    from ldm.metrics.bootstrap import summarise

    if any(r.uncertainty is None for r in records):
        return None
    found = [r.uncertainty for r in records]
    first = found[0]
    intervals = {}
    for name, mean in points.items():
        draws = joint.get(name)
        if draws is not None:
            finite = draws[np.isfinite(draws)]  # a relative FD whose ceiling met its floor: none
            if np.isfinite(mean) and len(finite) >= 2:
                e = summarise(mean, finite, first.level)
                intervals[name] = Interval(se=e.se, lo=e.lo, hi=e.hi, bias=e.bias)
        elif all(name in u.intervals for u in found):
            own = [_point(r, name) for r in records]
            intervals[name] = _typical([u.intervals[name] for u in found], own, mean)
    per_class = None
    if all(u.per_class is not None for u in found):
        per_class = {}
        for name in first.per_class:
            own = [(r.generation.fd_per_class or {}).get(name) for r in records]
            if all(name in u.per_class for u in found) and None not in own:
                spans = [u.per_class[name] for u in found]
                per_class[name] = _typical(spans, own, fmean(own))
    return first.model_copy(update={"intervals": intervals, "per_class": per_class})


def _point(record: EvaluateRecord, name: str) -> float:
    """The number an interval of `record` is around, by its name in `Uncertainty.intervals`."""
    if name == "relative_fd":
        return record.reference.relative(record.generation.fd)
    if name in ("fd_train_val", "fd_random_latents"):
        return getattr(record.reference, name)
    return getattr(record.generation, name)


def _diagnostics(
    records: Sequence[EvaluateRecord],
) -> tuple[LatentDiagnostics | None, dict[str, float]]:
    """The seeds' latent diagnostics as one (None unless every seed has them), and the spread
    over seeds of the latents' high-frequency share and of each noisy rFD (`noisy_rfd/0.1`).

    The channel lists are averaged rank by rank, each seed's values sorted first: channel k of
    one seed's tokenizer has nothing to do with channel k of another's (each trained from its
    own initialisation), so only the shape of the distribution over channels is comparable.

    A noisy rFD's interval is the typical within-seed one widened by the seeds' spread: every
    seed reconstructs the same val images, so the row noise its interval holds is common to all
    seeds and does not average out, while retraining adds a spread of its own whose share in the
    mean is sd / √seeds; the two are independent and add in quadrature. (The gFD resamples
    seeds and rows jointly instead; these rows are not kept for every σ.)"""
    found = [r.diagnostics for r in records]
    if any(d is None for d in found):
        return None, {}
    first = found[0]
    if len({(d.frequency_cut, d.feature_net, len(d.channel_std)) for d in found}) != 1:
        raise ValueError("the seeds' diagnostics differ in cut, network or channel count")
    spread = {"latent_high_frequency": _sd([d.latent_high_frequency for d in found])}
    level = records[0].uncertainty.level if records[0].uncertainty else None
    noisy, intervals = {}, {}
    for sigma in first.noisy_rfd:
        points = [d.noisy_rfd.get(sigma) for d in found]
        spans = [d.noisy_rfd_intervals.get(sigma) for d in found]
        if None in points or None in spans:
            continue
        noisy[sigma] = fmean(points)
        spread[f"noisy_rfd/{sigma}"] = _sd(points)
        typical = _typical(spans, points, noisy[sigma])
        intervals[sigma] = _widened(typical, noisy[sigma], _sd(points) / sqrt(len(points)), level)
    ranked = {
        name: [fmean(v) for v in zip(*(sorted(getattr(d, name)) for d in found), strict=True)]
        for name in ("channel_mean", "channel_std")
    }
    merged = first.model_copy(
        update={
            "latent_high_frequency": fmean(d.latent_high_frequency for d in found),
            "image_high_frequency": fmean(d.image_high_frequency for d in found),
            **ranked,
            "noisy_rfd": noisy,
            "noisy_rfd_intervals": intervals,
        }
    )
    return merged, spread


def _widened(typical: Interval, mean: float, seed_se: float, level: float | None) -> Interval:
    """`typical` (around `mean`) with `seed_se`, the mean's standard error from retraining,
    added in quadrature to its se and, at the interval's normal quantile, to each half-width."""
    z = NormalDist().inv_cdf(0.5 + level / 2) if level is not None else 0.0
    below = sqrt(max(mean - typical.lo, 0.0) ** 2 + (z * seed_se) ** 2)
    above = sqrt(max(typical.hi - mean, 0.0) ** 2 + (z * seed_se) ** 2)
    return Interval(
        se=sqrt(typical.se**2 + seed_se**2), lo=mean - below, hi=mean + above, bias=typical.bias
    )
