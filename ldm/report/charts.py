"""The report's two charts, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each variant has its own colour and marker: the Okabe-Ito palette, readable with the common
colour-vision deficiencies, and a distinct marker so the charts survive a grey-scale print.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ldm.records import ConvergenceCurve, EvaluateRecord, Interval
from ldm.report.grid import Dilemma
from ldm.report.paper import TABLE_2
from ldm.report.projection import UNITS
from ldm.report.summary import Projection, fmt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Okabe & Ito (2008), "Color Universal Design"; black is kept for the reference lines and the
# yellow last, as it is faint on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LABEL_LIMIT = 8  # beyond this many variants the legend alone names the points
DPI = 110
# Share of the drawn range left free beyond it (on a log axis: a factor of 1 + MARGIN), so that no
# interval end, reference line or tick sits on the frame.
MARGIN = 0.1


def style(index: int) -> tuple[str, str]:
    """(colour, marker) of the index-th variant; pairs stay unique for 56 variants."""
    return PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})


def _legend_beside(ax: Axes, handles: list | None = None, columns: int = 1) -> None:
    """The panel's legend outside it, to its right."""
    ax.legend(
        handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=columns
    )


def _reference_handles() -> list:
    from matplotlib.lines import Line2D

    return [
        Line2D(
            [], [], color="black", ls="--", lw=1, label="floor: train vs val (perfect generator)"
        ),
        Line2D(
            [],
            [],
            color="grey",
            marker="_",
            ls="none",
            markersize=18,
            markeredgewidth=2.5,
            label="ceiling: untrained generator (per tokenizer)",
        ),
    ]


def _error(value: float, interval: Interval | None) -> list[list[float]] | None:
    """An interval as matplotlib's asymmetric error: [[below], [above]] the value."""
    if interval is None:
        return None
    return [[max(value - interval.lo, 0.0)], [max(interval.hi - value, 0.0)]]


def _levels(levels: set[float]) -> str:
    """`90 %`, or `80/90 %` where records differ."""
    return "/".join(f"{level * 100:g}" for level in sorted(levels)) + " %"


def _tradeoff_panel(ax: Axes, records: list[EvaluateRecord], x_name: str, xlabel: str) -> None:
    """Each variant at (its tokenizer's `x_name`, its gFD) with the bootstrap intervals its
    record holds as bars, its ceiling as a tick, and the floors; framed to show all of them."""
    label_points = len(records) <= LABEL_LIMIT
    xs, ys = [], []  # every value drawn, for the frame
    for i, record in enumerate(records):
        colour, marker = style(i)
        x, gfd = getattr(record.tokenizer, x_name), record.generation.fd
        ceiling = record.reference.fd_random_latents
        ax.scatter([x], [gfd], color=colour, marker=marker, s=70, zorder=3, label=record.variant)
        # the ceiling depends on the tokenizer that decodes the random latents: one tick each
        ax.scatter([x], [ceiling], color=colour, marker="_", s=500, linewidths=2.5, zorder=2)
        y_interval, x_interval = record.interval("fd"), record.interval(x_name)
        if y_interval or x_interval:
            ax.errorbar(
                [x],
                [gfd],
                yerr=_error(gfd, y_interval),
                xerr=_error(x, x_interval),
                fmt="none",
                ecolor=colour,
                elinewidth=1.2,
                capsize=4,
                zorder=2.5,
            )
        xs += [x, *([x_interval.lo, x_interval.hi] if x_interval else [])]
        ys += [gfd, ceiling, *([y_interval.lo, y_interval.hi] if y_interval else [])]
        if label_points:  # alternate above and below: neighbours (plain, aligned) often touch
            offset = (7, 5 if i % 2 == 0 else -12)
            ax.annotate(record.variant, (x, gfd), offset, textcoords="offset points", fontsize=8)
    floors = sorted({r.reference.fd_train_val for r in records})
    for floor in floors:
        ax.axhline(floor, color="black", ls="--", lw=1, zorder=1)
    ax.set_ylim(0, max(ys + floors) * (1 + MARGIN))  # from 0: a distance
    pad = (max(xs) - min(xs)) * 0.15 or abs(xs[0]) * 0.1 or 1.0
    ax.set_xlim(min(xs) - pad, max(xs) + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"gFD ({records[0].generation.feature_net})")
    ax.grid(alpha=0.3)


def _paper_panel(ax: Axes, x_field: str, xlabel: str) -> None:
    specs = sorted({row.spec for row in TABLE_2})
    alignments = ("none", "MAE", "DINOv2")
    for row in TABLE_2:
        colour = PALETTE[specs.index(row.spec)]
        marker = MARKERS[alignments.index(row.alignment)]
        label = f"{row.spec}, VF: {row.alignment}"
        ax.scatter(
            [getattr(row, x_field)], [row.gfid_b], color=colour, marker=marker, s=55, label=label
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gFID-10K (Inception), LightningDiT-B")
    ax.grid(alpha=0.3)


def tradeoff_chart(records: list[EvaluateRecord], path: Path) -> None:
    """Reconstruction against generation: ours on top, the paper's Table 2 below it."""
    fig = _figure(13, 9)
    axes = fig.subplots(2, 2)
    rfd_net = records[0].tokenizer.feature_net
    _tradeoff_panel(axes[0, 0], records, "rfd", f"rFD ({rfd_net}), lower is better")
    _tradeoff_panel(axes[0, 1], records, "psnr", "PSNR (dB), higher is better")
    levels = {r.uncertainty.level for r in records if r.uncertainty}
    bars = f"; bars: {_levels(levels)} bootstrap intervals" if levels else ""
    axes[0, 0].set_title(f"This trial: reconstruction vs generation{bars}", loc="left", fontsize=10)
    handles, _ = axes[0, 0].get_legend_handles_labels()
    _legend_beside(axes[0, 1], handles + _reference_handles(), 2 if len(records) > 12 else 1)
    _paper_panel(axes[1, 0], "rfid", "rFID (Inception), ImageNet val")
    _paper_panel(axes[1, 1], "psnr", "PSNR (dB), ImageNet val")
    axes[1, 0].set_title(
        "The paper, for orientation only: other network, data and compute; do not compare "
        "values with the row above",
        loc="left",
        fontsize=10,
    )
    _legend_beside(axes[1, 1])
    _save(fig, path)


def _log_frame(values: list[float]) -> tuple[float, float] | None:
    """y-limits of a log axis holding every positive value, a factor 1 + MARGIN beyond them."""
    positive = [v for v in values if v > 0]
    if not positive:
        return None
    return min(positive) / (1 + MARGIN), max(positive) * (1 + MARGIN)


def _reference_lines(
    record: EvaluateRecord, curve: ConvergenceCurve, fit: Projection, target_fd: float
) -> tuple[tuple[float, str], tuple[float, str]]:
    """(value, label) of the floor and of the target a curve's points are compared with: at
    the curve's sample size where it records its own floor, else the evaluation's."""
    n, n_eval = curve.num_samples, record.generation.num_samples
    if curve.floor is None:
        floor = (record.reference.fd_train_val, f"floor: train vs val at N={n_eval}")
    else:
        floor = (curve.floor, f"floor: train vs val at N={n}")
    target = fit.target_at_sample_size
    if target is None:
        return floor, (target_fd, f"target gFD {target_fd:g} at N={n_eval}")
    return floor, (target, f"target gFD {target_fd:g} at N={n_eval} → {fmt(target)} at N={n}")


def convergence_chart(
    records: list[EvaluateRecord],
    curves: dict[str, ConvergenceCurve],
    projections: dict[str, Projection],
    target_fd: float,
    path: Path,
) -> None:
    """gFD against cumulative DiT compute, one panel per compute unit: each curve with its
    bootstrap band, its floor and the target at its sample size, and the fitted power law."""
    import numpy as np
    from matplotlib.lines import Line2D

    units = sorted({curves[r.variant].compute_unit for r in records})
    fig = _figure(11, 5.5 * len(units))
    axes = fig.subplots(len(units), 1, squeeze=False)[:, 0]
    levels = {c.interval_level for c in curves.values() if c.interval_level is not None}
    for ax, unit in zip(axes, units, strict=True):
        samples, drawn, bands = set(), [], []
        floors: dict[float, str] = {}
        targets: list[tuple[float, str, str | None, str]] = []  # value, label, variant, colour
        for i, record in enumerate(records):
            curve = curves[record.variant]
            if curve.compute_unit != unit:
                continue
            samples.add(curve.num_samples)
            colour, marker = style(i)
            points = [p for p in curve.points if p.compute_hours > 0]  # a log axis has no 0
            compute, fd = [p.compute_hours for p in points], [p.fd for p in points]
            ax.plot(compute, fd, color=colour, marker=marker, lw=1.5, label=record.variant)
            banded = [p for p in points if p.fd_lo is not None and p.fd_hi is not None]
            if banded:
                lo, hi = [p.fd_lo for p in banded], [p.fd_hi for p in banded]
                bands.append(([p.compute_hours for p in banded], lo, hi, colour))
                drawn += lo + hi
            fit = projections[record.variant]
            if fit.a is not None and fit.b is not None and points:
                end = fit.compute_hours or fit.limit_compute_hours
                end = min(max(end, fit.spent_compute_hours), fit.limit_compute_hours)
                grid = np.geomspace(points[0].compute_hours, end, 100)
                ax.plot(grid, fit.floor + fit.a * grid ** (-fit.b), color=colour, ls=":", lw=1.2)
            (floor, floor_label), (target, label) = _reference_lines(record, curve, fit, target_fd)
            floors[floor] = floor_label
            targets.append((target, label, record.variant, colour))
            drawn += fd + [floor, target]
        if len({value for value, *_ in targets}) == 1:  # one line for all, in black
            targets = [(targets[0][0], targets[0][1], None, "black")]
        frame = _log_frame(drawn)
        for compute, lo, hi, colour in bands if frame else []:
            # an end at or below 0 has no place on a log axis: it runs to the frame's bottom
            ax.fill_between(compute, np.maximum(lo, frame[0]), hi, color=colour, alpha=0.2, lw=0)
        for floor in floors:
            ax.axhline(floor, color="black", ls="--", lw=1)
        for value, _, _, colour in targets:
            ax.axhline(value, color=colour, ls="-.", lw=1)
        # log-log: a power law towards the floor bends into it, and the last points stay legible
        ax.set_xscale("log")
        ax.set_yscale("log")
        if frame:
            ax.set_ylim(*frame)
        ax.set_xlabel(f"cumulative DiT training compute ({UNITS.get(unit, unit)}, log scale)")
        net = records[0].generation.feature_net
        counts = "/".join(str(n) for n in sorted(samples))
        ax.set_ylabel(f"gFD ({net}), {counts} samples per point, log scale")
        ax.grid(alpha=0.3, which="both")

        handles, _ = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], color="black", ls="--", lw=1, label=label)
            for label in sorted(set(floors.values()))
        ]
        handles += [
            Line2D([], [], color=c, ls="-.", lw=1, label=t + (f" ({v})" if v else ""))
            for _, t, v, c in targets
        ]
        handles.append(
            Line2D([], [], color="grey", ls=":", lw=1.2, label="fitted power law, extended")
        )
        _legend_beside(ax, handles, 2 if len(records) > 12 else 1)
    band = f"; bands: {_levels(levels)} bootstrap intervals" if levels else ""
    axes[0].set_title(
        f"Generation quality against generator compute{band}", loc="left", fontsize=10
    )
    _save(fig, path)


def dilemma_chart(dilemma: Dilemma, feature_net: str, path: Path) -> None:
    """Reconstruction and generation against the latent width d, one line per regulariser,
    each point with its interval: where the lines part, the regulariser changes the dilemma."""
    from ldm.report.dilemma import regulariser_order

    fig = _figure(12, 4.8)
    axes = fig.subplots(1, 2)
    regularisers = sorted({p.regulariser for p in dilemma.grid}, key=regulariser_order)
    widths = sorted({p.width for p in dilemma.grid})
    panels = (("rfd", "rFD: reconstructions vs originals"), ("gfd", "gFD: generated vs val"))
    for ax, (number, title) in zip(axes, panels, strict=True):
        for i, regulariser in enumerate(regularisers):
            colour, marker = style(i)
            points = sorted(
                (p for p in dilemma.grid if p.regulariser == regulariser and getattr(p, number)),
                key=lambda p: p.width,
            )
            # a small sideways shift per regulariser, so that overlapping bars stay apart
            xs = [p.width * 2 ** (0.04 * (i - (len(regularisers) - 1) / 2)) for p in points]
            ys = [getattr(p, number) for p in points]
            lo = [getattr(p, f"{number}_lo") for p in points]
            hi = [getattr(p, f"{number}_hi") for p in points]
            ax.plot(xs, ys, color=colour, marker=marker, lw=1.5, label=regulariser)
            if all(v is not None for v in lo + hi):
                below = [max(y - low, 0.0) for y, low in zip(ys, lo, strict=True)]
                above = [max(high - y, 0.0) for y, high in zip(ys, hi, strict=True)]
                ax.errorbar(
                    xs, ys, yerr=[below, above], fmt="none", ecolor=colour, capsize=4, lw=1.2
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("latent channels d (log scale)")
        ax.set_ylabel(f"{number[0]}FD ({feature_net}), lower is better")
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"Does a wider latent pay off? Bars: {dilemma.level:.0%} bootstrap intervals",
        x=0.01,
        ha="left",
        fontsize=10,
    )
    _legend_beside(axes[1])
    _save(fig, path)
