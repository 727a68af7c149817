"""The report's reference tables: cost per stage, quality per money, gates, sampling speed."""

from __future__ import annotations

from collections.abc import Callable

from ldm.records import EvaluateRecord, StageCost
from ldm.report.projection import UNITS
from ldm.report.summary import ABSENT, ReportSummary, VariantSummary, fmt, usd
from ldm.report.text import escape, percent, table, wall
from ldm.report.verdicts import BRIEF_MODEL


def _stage_rows(stages: dict[str, StageCost]) -> list[list[str]]:
    return [
        [
            name,
            escape(c.device_kind),
            wall(c.wall_seconds),
            fmt(c.cpu_hours),
            fmt(c.gpu_hours),
            fmt(c.energy_kwh),
            usd(c.usd),
        ]
        for name, c in stages.items()
    ]


def cost_section(records: list[EvaluateRecord], s: ReportSummary) -> str:
    columns = ["stage", "device", "wall time", "CPU-h", "GPU-h", "energy (kWh)", "USD"]
    parts = [
        "## Cost",
        "",
        f"The trial's stages up to this report cost {usd(s.trial_usd)} (each counted once; "
        "the trial's MLflow run adds the report's own cost to its `cost/*`). A variant's total "
        "below includes the stages it shares with the others (validate, prepare, ...), so the "
        "variants' totals add up to more than the trial. Energy shows "
        f"{ABSENT} where nothing measured it (on a CPU); it is never a zero.",
        "",
    ]
    for record in records:
        total = record.cost.total
        rows = _stage_rows(record.cost.stages)
        rows.append(["**total**", *_stage_rows({"": total})[0][1:]])
        parts += [f"### {record.variant}", "", table(columns, rows), ""]
    value_columns = [
        "variant",
        "total cost",
        "gap closed",
        "gap closed per USD",
        "FD gained per compute-hour",
        "compute unit",
    ]
    value_rows = [
        [
            v.variant,
            usd(v.usd),
            percent(1 - v.relative_fd),
            ABSENT if v.gap_closed_per_usd is None else f"{percent(v.gap_closed_per_usd)} per $",
            fmt(v.fd_gain_per_compute_hour),
            UNITS.get(v.compute_unit, v.compute_unit),
        ]
        for v in s.variants
    ]
    parts += [
        "### Quality per money",
        "",
        table(value_columns, value_rows),
        "",
        "- **gap closed** = 1 − relative FD: the share of the way from an untrained generator "
        "(ceiling) to real data (floor) that the variant's generator covered.",
        "- **gap closed per USD** = gap closed / the variant's total cost.",
        "- **FD gained per compute-hour** = (ceiling − gFD) / the variant's total compute "
        "(GPU-hours if any stage ran on a GPU, otherwise CPU-hours).",
        "",
        "Both compare variants of this trial; they are not rates to extrapolate (the curve "
        "above shows the returns diminish).",
    ]
    return "\n".join(parts)


def gates_section(s: ReportSummary) -> str:
    names = [g.name for g in s.variants[0].staging]
    if not names:
        return "## Gates\n\nNo staging gate is switched on: every variant passes."

    def cell(v: VariantSummary, name: str) -> str:
        gate = next(g for g in v.staging if g.name == name)
        op = "≤" if name.startswith("max_") else "≥"
        value = "missing" if gate.value is None else fmt(gate.value)
        return f"{value} {op} {gate.threshold:g} {'pass' if gate.passed else 'FAIL'}"

    rows = [
        [v.variant, *(cell(v, n) for n in names), "pass" if v.passed_production else "FAIL"]
        for v in s.variants
    ]
    return "\n".join(
        [
            "## Gates",
            "",
            table(["variant", *names, "production gates"], rows),
            "",
            "The staging gates (`promotion.gates.staging`) decide the recommendation: among the "
            "variants that pass them all, the lowest gFD wins, and on a tie the cheaper one. "
            "`ldm promote` checks the same gates. Production also requires the version to have "
            "held the staging alias.",
        ]
    )


def speed_section(records: list[EvaluateRecord]) -> str:
    rows = [
        [
            r.variant,
            escape(r.speed.device_kind),
            f"{r.speed.solver}, {r.speed.steps} steps, CFG {r.speed.cfg_scale:g}",
            fmt(r.speed.sample_images_per_second),
            fmt(r.speed.encode_images_per_second),
            fmt(r.speed.decode_images_per_second),
        ]
        for r in records
    ]
    note = (
        "Measured on a CPU: compare the variants with each other, not with a GPU."
        if any(r.speed.device_kind == "cpu" for r in records)
        else "Measured on the GPU named; another GPU model changes the absolute numbers."
    )
    return "\n".join(
        [
            "## Sampling speed",
            "",
            table(
                ["variant", "device", "sampler", "samples/s", "encode img/s", "decode img/s"], rows
            ),
            "",
            note,
        ]
    )


def per_class_section(records: list[EvaluateRecord]) -> str:
    """Each class's gFD per variant, with its interval; empty when the data has no classes."""
    classes = sorted({c for r in records for c in (r.generation.fd_per_class or {})})
    if not classes:
        return ""

    def cell(record: EvaluateRecord, name: str) -> str:
        value = (record.generation.fd_per_class or {}).get(name)
        per_class = (record.uncertainty.per_class if record.uncertainty else None) or {}
        interval = per_class.get(name)
        if value is None or interval is None:
            return fmt(value)
        return f"{fmt(value)} [{fmt(interval.lo)}..{fmt(interval.hi)}]"

    rows = [[escape(name), *(cell(r, name) for r in records)] for name in classes]
    return "\n".join(
        [
            "## Per class",
            "",
            table(["class", *(escape(r.variant) for r in records)], rows),
            "",
            "Each class's gFD (its generated images against its validation images), with its "
            "bootstrap interval: a class has a few dozen images on each side, so these read far "
            "above the overall gFD and vary more; compare a class across variants, not "
            "classes with each other.",
        ]
    )


DILEMMA_PNG = "dilemma.png"  # drawn only for a grid of two or more latent widths


def _number(value: float | None, lo: float | None, hi: float | None) -> str:
    if value is None:
        return ABSENT
    return fmt(value) + ("" if lo is None or hi is None else f" [{fmt(lo)}..{fmt(hi)}]")


def dilemma_section(s: ReportSummary, image: Callable[[str], str]) -> str:
    """The three questions of a grid of widths and regularisers, each answered with the paired
    verdicts and, where the trial cannot tell, the price of one that could."""
    d = s.dilemma
    if d is None:
        return ""
    from ldm.report.dilemma import regulariser_order

    points = sorted(d.grid, key=lambda p: (p.width, regulariser_order(p.regulariser)))
    rows = [
        [
            escape(p.variant),
            f"f{p.downsampling}",
            str(p.width),
            escape(p.regulariser),
            _number(p.rfd, p.rfd_lo, p.rfd_hi),
            _number(p.gfd, p.gfd_lo, p.gfd_hi),
        ]
        for p in points
    ]
    net = s.variants[0].gfd_net
    plans = [f"- {escape(a.text)}." + (f" {escape(a.plan)}" if a.plan else "") for a in d.wider]
    tops = [f"- {escape(w.text)}" + (f" {escape(w.plan)}" if w.plan else "") for w in d.per_width]
    return "\n".join(
        [
            "## Which latent space: the reconstruction-vs-generation dilemma",
            "",
            f"![Reconstruction and generation against latent width]({image(DILEMMA_PNG)})",
            "",
            table(["variant", "f", "d", "regulariser", f"rFD ({net})", f"gFD ({net})"], rows),
            "",
            f"**Does a wider latent pay off here?** {escape(d.wider_text)}",
            "",
            *plans,
            "",
            "**Which regulariser pays off at each d?**",
            "",
            *(tops or ["- No width has two or more variants."]),
            "",
            f"**Which latent space would we pick, at what cost?** {escape(d.pick_text)}"
            + (f" {escape(d.pick_plan)}" if d.pick_plan else ""),
            "",
            f"The plans' model: {escape(BRIEF_MODEL)}",
            "",
            "How to read it: rFD compares each tokenizer's reconstructions of the validation "
            "images with the images themselves, gFD the generated images with them; lower is "
            "better for both. A gap reads wider minus narrower, over the same images, with its "
            f"{percent(d.level)} paired interval (with one seed widened by an assumed "
            "retraining spread, as in the verdicts). A wider latent that reconstructs better but "
            "generates worse is the paper's dilemma; a regulariser pays off when it closes that "
            "gap: its variant sits in the top set of its width.",
        ]
    )
