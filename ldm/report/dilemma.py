"""The paper's question on the company's images: which latent space, at what width and with which
regulariser, generates best, and what does reconstruction tell about it.

A trial whose variants span two or more latent widths d (`ldm preset dilemma`: d = 8 and 32, each
plain, aligned (VF), equivariant and latent-denoising) gets three answers, each from the paired
verdicts of ldm/report/verdicts.py, so each says when the trial cannot tell:
- does a wider latent pay off? Per regulariser, the wider variant against the narrower on
  reconstruction (rFD, paired over the same val images) and on generation (gFD);
- which regulariser pays off at each d? The top set among the variants of that width;
- which latent space would we pick, at what cost? The trial's own verdict: the top set over
  every variant that passes the staging gates, and the cheapest in it.
An undecided answer prices the trial that would decide (`plan`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ldm.report.grid import Dilemma, Gap, GridPoint, WidthAnswer, WidthTopSet
from ldm.report.summary import Comparison, VariantSummary, fmt, usd
from ldm.report.verdicts import between, plan, top_set, widened

if TYPE_CHECKING:
    from ldm.config import VariantConfig
    from ldm.metrics.comparison import ReconstructionDraws

PLAIN = "plain"
# A variant's switches and the regulariser each names, in the order they are listed and drawn;
# combinations are named by joining these.
SWITCHES = {"align": "VF", "equivariance": "equivariance", "latent_denoising": "latent denoising"}
REGULARISERS = tuple(SWITCHES.values())


def reading(gap: Gap, narrow: float | None, wide: float | None) -> str:
    """`rFD 78.0 → 71.5, -6.50 [-9.10..-3.90]: better` (wide minus narrow, lower is better)."""
    word = "no detectable difference"
    if gap.detectable:
        word = "better" if gap.difference < 0 else "worse"
    return (
        f"{gap.number} {fmt(narrow)} → {fmt(wide)}, {fmt(gap.difference)} "
        f"[{fmt(gap.lo)}..{fmt(gap.hi)}]: {word}"
    )


def grid_point_of(
    name: str, preset: str, latent_channels: int | None, flags: dict[str, bool]
) -> tuple[int, int, str]:
    """(f, d, regulariser) of a variant: its preset's name spells f and d (`f4d8`), its
    latent_channels overrides d, its switches (`flags`: VF, equivariance, latent denoising)
    name the regulariser."""
    found = re.fullmatch(r"f(\d+)d(\d+)", preset)
    if found is None:
        raise ValueError(f"variant {name!r}: preset {preset!r} does not spell f and d")
    names = [r for r in REGULARISERS if flags.get(r)]
    f, d = int(found[1]), latent_channels or int(found[2])
    return f, d, " + ".join(names) if names else PLAIN


def grid_of(variants: dict[str, VariantConfig]) -> dict[str, tuple[int, int, str]]:
    """Each variant's (f, d, regulariser), read off its own entry in `variants`."""
    return {
        name: grid_point_of(
            name,
            v.preset,
            v.latent_channels,
            {label: getattr(v, switch) for switch, label in SWITCHES.items()},
        )
        for name, v in variants.items()
    }


def regulariser_order(label: str) -> tuple[int, str]:
    return (label.count("+") + (label != PLAIN), label)


def reconstruction_gap(
    narrow: ReconstructionDraws,
    wide: ReconstructionDraws,
    names: tuple[str, str],
    level: float,
    min_effect: float,
) -> Gap:
    """wide − narrow rFD, paired over the same images. With one seed the draws hold no
    retraining noise, so, as for the gFD (`compare_all`), each variant's own bootstrap spread
    stands in for it: se = √(se_images² + s_narrow² + s_wide²)."""
    from ldm.metrics.bootstrap import summarise

    draws = wide.draws - narrow.draws
    estimate = summarise(wide.rfd - narrow.rfd, draws, level)
    lo, hi = estimate.lo, estimate.hi
    if min(len(narrow.seed_rfds), len(wide.seed_rfds)) == 1:
        spread = math.hypot(float(narrow.draws.std(ddof=1)), float(wide.draws.std(ddof=1)))
        lo, hi, _ = widened(estimate.point, estimate.se, spread, level)
    threshold = min_effect * min(narrow.rfd, wide.rfd)
    detectable = (lo > 0 or hi < 0) and abs(estimate.point) >= threshold
    return Gap(
        number="rFD",
        narrow=names[0],
        wide=names[1],
        difference=estimate.point,
        lo=lo,
        hi=hi,
        detectable=detectable,
    )


def generation_gap(c: Comparison, narrow: str, wide: str) -> Gap:
    """The verdict's gFD gap, turned to read wide − narrow."""
    sign = 1.0 if c.worse == wide else -1.0
    lo, hi = sorted((sign * c.lo, sign * c.hi))
    return Gap(
        number="gFD",
        narrow=narrow,
        wide=wide,
        difference=sign * c.gfd_difference,
        lo=lo,
        hi=hi,
        detectable=c.detectable,
    )


def width_answers(
    grid: dict[str, GridPoint],
    summaries: dict[str, VariantSummary],
    comparisons: list[Comparison],
    recon: dict[str, ReconstructionDraws] | None,
    level: float,
    min_effect: float,
    num_samples: int,
) -> list[WidthAnswer]:
    """Per regulariser (and f), each wider variant against the narrowest."""
    groups: dict[tuple[int, str], list[GridPoint]] = {}
    for point in grid.values():
        groups.setdefault((point.downsampling, point.regulariser), []).append(point)
    answers = []
    for (f, regulariser), points in sorted(
        groups.items(), key=lambda g: regulariser_order(g[0][1])
    ):
        points = sorted(points, key=lambda p: p.width)
        narrow = points[0]
        for wide in points[1:]:
            if wide.width == narrow.width:
                continue
            c = between(comparisons, narrow.variant, wide.variant)
            gen = generation_gap(c, narrow.variant, wide.variant)
            rec = None
            if recon is not None:
                pair = (narrow.variant, wide.variant)
                rec = reconstruction_gap(
                    recon[narrow.variant], recon[wide.variant], pair, level, min_effect
                )
            pays = None if not gen.detectable else gen.difference < 0
            label = f"{regulariser}" + (f" (f{f})" if len({g[0] for g in groups}) > 1 else "")
            text = (
                f"{label}, d = {narrow.width} → {wide.width}: "
                + (f"reconstruction {reading(rec, narrow.rfd, wide.rfd)}; " if rec else "")
                + f"generation {reading(gen, narrow.gfd, wide.gfd)}"
            )
            undecided = None
            if pays is None:
                better, worse = c.better, c.worse
                undecided = plan(c, summaries[better], summaries[worse], num_samples, brief=True)
            answers.append(
                WidthAnswer(
                    regulariser=label,
                    narrow=narrow.variant,
                    wide=wide.variant,
                    narrow_width=narrow.width,
                    wide_width=wide.width,
                    reconstruction=rec,
                    generation=gen,
                    pays_off=pays,
                    text=text,
                    plan=undecided,
                )
            )
    return answers


def wider_text(answers: Sequence[WidthAnswer]) -> str:
    """One sentence over every regulariser: where a wider latent generates better, worse, or
    where the trial cannot tell."""
    pays = [a.regulariser for a in answers if a.pays_off is True]
    costs = [a.regulariser for a in answers if a.pays_off is False]
    open_ = [a.regulariser for a in answers if a.pays_off is None]
    parts = []
    if pays:
        parts.append(f"a wider latent generates detectably better with {', '.join(pays)}")
    if costs:
        dilemma = [
            a.regulariser
            for a in answers
            if a.pays_off is False
            and a.reconstruction
            and a.reconstruction.detectable
            and a.reconstruction.difference < 0
        ]
        parts.append(
            f"it generates detectably worse with {', '.join(costs)}"
            + (
                f" (while reconstructing better with {', '.join(dilemma)}: the paper's dilemma)"
                if dilemma
                else ""
            )
        )
    if open_:
        parts.append(
            f"this trial cannot tell with {', '.join(open_)} (the plans below price the trial "
            "that would)"
        )
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def width_top_sets(
    grid: dict[str, GridPoint],
    summaries: dict[str, VariantSummary],
    comparisons: list[Comparison],
    num_samples: int,
) -> list[WidthTopSet]:
    """At each width with two or more variants: the best by gFD and every variant not detectably
    worse (gates aside: this is about the latent space, not a promotion)."""
    found = []
    for width in sorted({p.width for p in grid.values()}):
        names = [p.variant for p in grid.values() if p.width == width]
        if len(names) < 2:
            continue
        top = top_set([summaries[n] for n in names], comparisons)
        best = summaries[top[0]]
        labels = {n: grid[n].regulariser for n in names}
        named = [f"{n} ({labels[n]})" for n in top]
        listed = ", ".join(named[:-1]) + f" and {named[-1]}"
        plains = [n for n in names if labels[n] == PLAIN]
        if len(top) == 1:
            beaten = [between(comparisons, top[0], n) for n in names if n != top[0]]
            text = (
                f"d = {width}: {top[0]} ({labels[top[0]]}) is best, gFD {fmt(best.gfd)}, "
                "detectably better than every other variant of this width: "
                + "; ".join(c.text for c in beaten)
            )
            decide = None
        else:
            text = (
                f"d = {width}: no detectable difference between {listed}; {top[0]} is best by "
                f"point (gFD {fmt(best.gfd)})"
            )
            closest = between(comparisons, top[0], top[1])
            decide = plan(closest, summaries[top[0]], summaries[top[1]], num_samples, brief=True)
        if plains and plains[0] in top:
            text += f". {plains[0]} (no regulariser) is in the top set: none detectably beats it"
        elif plains:
            text += f". Every variant in the top set beats {plains[0]} (no regulariser)"
        found.append(WidthTopSet(width=width, top_set=top, text=text + ".", plan=decide))
    return found


def pick_text(
    grid: dict[str, GridPoint],
    summaries: dict[str, VariantSummary],
    recommended: str | None,
    headline: str,
    top: list[str],
) -> str:
    """The trial's own verdict, said as a latent space and a price."""
    if recommended is None:
        return f"No latent space can be picked yet: {headline}."
    p, v = grid[recommended], summaries[recommended]
    others = [n for n in top if n != recommended]
    company = (
        f"; the top set also holds {', '.join(others)}, not detectably different"
        if others
        else ", alone in the top set"
    )
    return (
        f"{recommended}: f{p.downsampling}, d = {p.width}, {p.regulariser}, gFD {fmt(v.gfd)} "
        f"for {usd(v.usd)} of this trial{company} ({headline})."
    )


def build(
    specs: dict[str, tuple[int, int, str]],
    summaries: dict[str, VariantSummary],
    comparisons: list[Comparison],
    recon: dict[str, ReconstructionDraws] | None,
    level: float,
    min_effect: float,
    num_samples: int,
    verdict: tuple[str | None, str, list[str]],
) -> Dilemma | None:
    """The three answers, for a trial whose variants span two or more widths (else None: a
    trial of one width is answered by its verdict alone). `specs`: (f, d, regulariser) per
    variant (`grid_point_of`); `verdict`: (recommended, headline, top set)."""
    from ldm.metrics.bootstrap import summarise

    if len({d for _, d, _ in specs.values()}) < 2:
        return None
    if set(specs) != set(summaries):
        placed, named = sorted(specs), sorted(summaries)
        raise ValueError(f"the grid places {placed}, the report has the variants {named}")
    grid = {}
    for name, (f, d, regulariser) in specs.items():
        v, rfd = summaries[name], None
        if recon is not None:
            rfd = summarise(recon[name].rfd, recon[name].draws, level)
        gfd = v.intervals.get("gfd")
        grid[name] = GridPoint(
            variant=name,
            downsampling=f,
            width=d,
            regulariser=regulariser,
            rfd=None if rfd is None else rfd.point,
            rfd_lo=None if rfd is None else rfd.lo,
            rfd_hi=None if rfd is None else rfd.hi,
            gfd=v.gfd,
            gfd_lo=None if gfd is None else gfd.lo,
            gfd_hi=None if gfd is None else gfd.hi,
        )
    wider = width_answers(grid, summaries, comparisons, recon, level, min_effect, num_samples)
    recommended, headline, top = verdict
    return Dilemma(
        grid=list(grid.values()),
        level=level,
        wider=wider,
        wider_text=wider_text(wider) if wider else "No regulariser was trained at two widths.",
        per_width=width_top_sets(grid, summaries, comparisons, num_samples),
        pick_text=pick_text(grid, summaries, recommended, headline, top),
        pick_plan=None
        if len(top) < 2
        else plan(
            between(comparisons, top[0], top[1]),
            summaries[top[0]],
            summaries[top[1]],
            num_samples,
            brief=True,
        ),
    )
