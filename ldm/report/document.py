"""The report's text: one Markdown document, also the source of the HTML page.

It opens with the verdict, as a reader deciding on the next step needs it first, then the
evidence behind it: the quality table, why each latent space generates as it does, the
trade-off, the convergence and its projection, costs, gates and speed, each with what its
numbers mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ldm.config import ReportConfig
from ldm.records import ConvergenceCurve, EvaluateRecord
from ldm.report.diagnostics import diagnostics_section
from ldm.report.paper import PAPER_SETUP, PAPER_SOURCE, TABLE_2
from ldm.report.projection import INTERVAL, UNITS
from ldm.report.summary import ABSENT, ReportSummary, fmt, interval_note, usd, with_interval
from ldm.report.tables import (
    cost_section,
    dilemma_section,
    gates_section,
    per_class_section,
    speed_section,
)
from ldm.report.text import escape, percent, table

TRADEOFF_PNG = "tradeoff.png"
CONVERGENCE_PNG = "convergence.png"


@dataclass(frozen=True)
class ReportInputs:
    records: list[EvaluateRecord]
    curves: dict[str, ConvergenceCurve]
    report: ReportConfig
    summary: ReportSummary


def _header(s: ReportSummary) -> str:
    h = s.header
    classes = f"{len(h.classes)} classes" if h.classes else "no class labels"
    commit = f"code {escape(h.git_commit[:12])}" if h.git_commit else "code outside git"
    return (
        f"# Trial report: {escape(h.trial)}\n\n"
        f"{escape(h.created)} · {commit} · {h.n_train:,} training and {h.n_val:,} validation "
        f"images, {classes}, {h.resolution} px · {len(s.variants)} variant(s)"
    )


def _verdict(s: ReportSummary) -> str:
    lines = ["## Verdict", ""]
    best = next((v for v in s.variants if v.variant == s.recommended), None)
    if best is None:
        lines += ["**Not ready.** No variant passes the staging gates:", ""]
        lines += [f"- {name}: " + "; ".join(failed) for name, failed in s.failed_gates.items()]
        lines += [
            "",
            "Loosen a gate in `params.yaml` (`promotion.gates.staging`) only if the threshold was "
            "wrong; otherwise the projection below says what more training would cost. The "
            "alias `candidate` was taken from any earlier pick.",
        ]
        return "\n".join(lines + _comparisons(s))
    # the sentence is `headline (evidence)`: the headline in bold, then what it rests on
    headline = s.recommendation.removesuffix(f" ({s.evidence})")
    lines += [f"**{escape(headline[:1].upper() + headline[1:])}.** {escape(s.evidence)}."]
    lines += [
        "",
        f"Its generator scores gFD {with_interval(best, 'gfd')} ({best.gfd_net}), between the "
        f"floor {fmt(best.fd_floor)} (real images against real images) and the ceiling "
        f"{fmt(best.fd_ceiling)} (an untrained generator): it has closed "
        f"{percent(1 - best.relative_fd)} of that gap. Precision {fmt(best.precision, 2)}, recall "
        f"{fmt(best.recall, 2)}; the trial cost {usd(best.usd)} for this variant.",
        "",
        f"To reach the target gFD {fmt(s.target_fd)}: {best.projection.text}. "
        + (
            "It also passes the production gates (promotion requires staging first)."
            if best.passed_production
            else "It does not yet pass the production gates: "
            + "; ".join(g.text for g in best.production if not g.passed)
            + "."
        ),
    ]
    if s.plan:
        lines += ["", f"**What it would take to decide.** {escape(s.plan)}"]
    return "\n".join(lines + _comparisons(s))


def _comparisons(s: ReportSummary) -> list[str]:
    """Every pair's verdict, against the best first (not transitive: read them against it)."""
    if not s.comparisons:
        return []
    anchor = s.top_set[0] if s.top_set else min(s.variants, key=lambda v: v.gfd).variant
    ordered = sorted(s.comparisons, key=lambda c: (anchor not in (c.better, c.worse), c.better))
    level = percent(s.comparisons[0].level)
    rows = [
        [
            escape(c.better),
            escape(c.worse),
            f"{fmt(c.gfd_difference)} [{fmt(c.lo)}..{fmt(c.hi)}]",
            ABSENT
            if c.relative_fd_difference is None
            else f"{fmt(c.relative_fd_difference, 2)} [{fmt(c.relative_fd_lo, 2)}.."
            f"{fmt(c.relative_fd_hi, 2)}]",
            ABSENT
            if c.kid_difference is None
            else f"{fmt(c.kid_difference, 2)} ± {fmt(c.kid_difference_std, 2)}",
            "better" if c.detectable else "no detectable difference",
        ]
        for c in ordered
    ]
    columns = ["better", "than", "gFD gap", "relative FD gap", "KID gap", "verdict"]
    return [
        "",
        "### Which differences are real",
        "",
        table(columns, rows),
        "",
        f"Each gap is worse minus better, with its {level} paired-bootstrap interval: one draw "
        "resamples the validation rows once for both variants and the generated rows with the "
        "same indices (the same noise and labels), so only the noise that differs between them "
        "remains. A gap counts as real when its interval excludes 0 and it reaches "
        f"`report.min_effect` of the better gFD (here {fmt(ordered[0].min_effect)} for the "
        "first row): smaller gaps are what retraining with another seed alone causes. "
        '"No detectable difference" is not transitive, so read the rows against the best '
        f"({escape(anchor)}): the top set is {', '.join(map(escape, s.top_set)) or ABSENT}. "
        "KID's gap is its mean ± standard deviation over paired subsets of its own (the same "
        "rows for both variants), so it need not equal the difference of the KIDs above.",
    ]


def _glance(s: ReportSummary) -> str:
    first = s.variants[0]
    columns = [
        "variant",
        "PSNR (dB)",
        f"rFD ({first.rfd_net})",
        f"gFD ({first.gfd_net})",
        "guidance",
        "floor",
        "ceiling",
        "relative FD",
        "precision",
        "recall",
        "density",
        "coverage",
        "cost",
        "staging gates",
    ]
    rows = [
        [
            v.variant
            + (" (recommended)" if v.variant == s.recommended else "")
            + (" (self-graded)" if v.self_graded else ""),
            with_interval(v, "psnr"),
            with_interval(v, "rfd"),
            with_interval(v, "gfd"),
            ABSENT if v.cfg_scale is None else f"{v.cfg_scale:g}",
            fmt(v.fd_floor),
            fmt(v.fd_ceiling),
            with_interval(v, "relative_fd", 2),
            with_interval(v, "precision", 2),
            with_interval(v, "recall", 2),
            with_interval(v, "density", 2),
            with_interval(v, "coverage", 2),
            usd(v.usd),
            "pass" if v.passed_staging else "FAIL",
        ]
        for v in s.variants
    ]
    return "\n".join(
        [
            "## Results at a glance",
            "",
            table(columns, rows),
            "",
            interval_note(s),
            "",
            "- **gFD** is the Fréchet distance between generated and validation images in the "
            f"features of {first.gfd_net} (not Inception, so not an FID); lower is better. It "
            "is only comparable with other numbers measured in the same network on the same data.",
            "- **floor** is the FD between the training and the validation images: what a perfect "
            "generator would score. **ceiling** is the FD of images decoded from random latents: "
            "what an untrained generator scores with that variant's tokenizer.",
            "- **relative FD** = (gFD − floor) / (ceiling − floor): 0 is as good as real data, "
            "1 as bad as an untrained generator.",
            "- **guidance** is the classifier-free guidance scale each variant's numbers were "
            "measured at: of `evaluate.cfg_scales`, the one whose samples came closest to the "
            "*training* images, so that choosing it does not flatter the gFD measured on the "
            "validation images. The registered model samples at it by default; with several "
            "seeds, each seed chooses its own, and the table shows the one most chose.",
            "- **rFD** and **PSNR** measure the tokenizer alone: how well it reconstructs "
            "validation images. **precision** is the share of generated images that look like "
            "real ones (fidelity), **recall** the share of real images the generator covers "
            "(diversity).",
            *(
                [
                    "- **self-graded**: measured in a network the variant's tokenizer was "
                    "trained against (`evaluate.allow_self_graded`), so its FDs flatter it.",
                ]
                if any(v.self_graded for v in s.variants)
                else []
            ),
        ]
    )


def _tradeoff(s: ReportSummary, image: Callable[[str], str]) -> str:
    level = s.variants[0].interval_level
    bars = (
        f" A vertical bar is the gFD's {percent(level)} bootstrap interval; two bars that "
        "overlap do not by themselves mean the variants do not differ, since a pair shares its "
        "val rows and their noise cancels in the difference: the verdicts (paired comparisons) "
        "decide."
        if level is not None
        else ""
    )
    rows = [
        [
            row.label,
            fmt(row.rfid, 2),
            fmt(row.psnr),
            fmt(row.gfid_b),
            fmt(row.gfid_l),
            fmt(row.gfid_xl),
        ]
        for row in TABLE_2
    ]
    return "\n".join(
        [
            "## Reconstruction vs generation",
            "",
            f"![Reconstruction against generation quality per variant]({image(TRADEOFF_PNG)})",
            "",
            "Top row, this trial: each point is a variant, its tokenizer's reconstruction (rFD, or "
            "PSNR) against its generator's gFD. The dashed line is the floor; the short bar in a "
            "variant's colour is its ceiling. The paper's dilemma is that a tokenizer which "
            "reconstructs better (left in the rFD panel) can make generation worse (higher); "
            f"alignment (VF loss) aims to lower gFD at little reconstruction cost.{bars}",
            "",
            f"Bottom row, for orientation only: {PAPER_SOURCE} ({PAPER_SETUP}). Those are FIDs in "
            f"Inception on ImageNet with far more compute; our FDs use {s.variants[0].gfd_net} on "
            "your images. Compare the direction of the trade-off, never the values.",
            "",
            table(["paper tokenizer", "rFID", "PSNR", "gFID B", "gFID L", "gFID XL"], rows),
        ]
    )


def _sample_size_note(inputs: ReportInputs) -> str:
    """Whether each curve's points, floor and target are compared at the curve's sample size."""
    evaluated = {r.variant: r.generation.num_samples for r in inputs.records}
    same, older = [], []
    for v in inputs.summary.variants:
        p, n_eval = v.projection, evaluated[v.variant]
        if p.target_at_sample_size is None:
            older.append(f"{v.variant} (points at N = {p.sample_size}, lines at N = {n_eval})")
            continue
        shift = p.target_at_sample_size - p.target_fd
        sign = "+" if shift >= 0 else "−"
        same.append(
            f"{v.variant}, N = {p.sample_size} of {n_eval}: {fmt(p.target_fd)} {sign} "
            f"{fmt(abs(shift))} = {fmt(p.target_at_sample_size)}"
        )
    notes = []
    if same:
        notes.append(
            "An FD of fewer samples reads higher, so a curve's points, its floor (train vs val "
            "at as many samples) and the target are compared at the curve's own sample size N, "
            "the target moved by how much higher the evaluated generator reads at N than on all "
            "its samples: " + "; ".join(same) + "."
        )
    if older:
        notes.append(
            "Curves from before their own floor compare their points with the evaluation's "
            "floor and target, at more samples, which errs towards more compute: "
            + "; ".join(older)
            + "."
        )
    guidance = [
        f"{r.variant} (curve {inputs.curves[r.variant].cfg_scale:g}, evaluation "
        f"{r.generation.cfg_scale:g})"
        for r in inputs.records
        if inputs.curves[r.variant].cfg_scale is not None
        and r.generation.cfg_scale is not None
        and inputs.curves[r.variant].cfg_scale != r.generation.cfg_scale
    ]
    if guidance:
        notes.append(
            "The curve samples at `sample.cfg_scale`, the evaluation at the guidance it chose, "
            "so the target's move comes from images drawn at another guidance than the curve's: "
            + "; ".join(guidance)
            + "."
        )
    return " ".join(notes)


def _projection(inputs: ReportInputs, image: Callable[[str], str]) -> str:
    s, cfg = inputs.summary, inputs.report
    rows = []
    for v in s.variants:
        p, curve = v.projection, inputs.curves[v.variant]
        unit = UNITS.get(p.compute_unit, p.compute_unit)
        b = ABSENT if p.b is None else f"{p.b:.2f} ± {fmt(p.b_stderr, 2)}"
        rows.append(
            [
                v.variant,
                str(len(curve.points)),
                b,
                f"{fmt(p.spent_compute_hours)} {unit}",
                f"{usd(p.price_per_hour)}/{unit.rstrip('s')}",
                p.text,
            ]
        )
    spent_units = sorted({UNITS.get(v.projection.compute_unit, "") for v in s.variants})
    return "\n".join(
        [
            f"## Convergence and projected cost to gFD ≤ {fmt(cfg.target_fd)}",
            "",
            f"![gFD against generator compute per variant]({image(CONVERGENCE_PNG)})",
            "",
            "Each point is a cheap gFD of samples from the generator during training, against "
            f"the cumulative compute of its DiT training ({', '.join(spent_units)}), shaded "
            "by its bootstrap interval where the curve recorded one. The dashed line is the "
            f"floor, the dash-dotted line the target ({fmt(cfg.target_fd)}, "
            "`report.target_fd`), each at the sample size the label gives; dotted lines are the "
            "fitted curves extended."
            + (
                " A variant trained with several seeds is drawn and projected with its first "
                "seed's curve."
                if any(v.seeds > 1 for v in s.variants)
                else ""
            ),
            "",
            table(
                ["variant", "points", "b ± s.e.", "DiT compute spent", "price", "projection"], rows
            ),
            "",
            "**The model.** FD(c) = floor + a · c^(−b), with c the cumulative DiT compute and "
            "floor the train-vs-val FD: a power law falling towards what real data scores. "
            "Subtracting the floor makes it a straight line in log-log space, fitted by least "
            "squares to the curve's points (those above the floor with compute > 0; at least 3). "
            "The projected compute is where the fitted curve meets the target, priced at the "
            f"recorded price per compute-hour; the {percent(INTERVAL)} interval draws a and b "
            "from their least-squares uncertainty (Student-t, n − 2 degrees of freedom). It "
            "counts DiT training only: the tokenizer is already paid for.",
            "",
            f"**Not reached within {cfg.projection_budget_multiple:g}× this budget** means the "
            "target is at or below the floor, or the fitted curve is flat or rising (b ≤ 0), or "
            "the fit "
            f"needs more than {cfg.projection_budget_multiple:g}× the DiT compute this trial spent "
            "(`report.projection_budget_multiple`): an extrapolation that far is not a forecast.",
            "",
            "**Assumptions.** Training would go on as it ran: same model, batch, data and "
            "sampler. The points come from one run whose learning rate changes along it "
            "(warm-up, decay), so the fit mixes the effect of more compute with that of the "
            "schedule; a longer run, its schedule stretched, traces its own curve. Read the "
            f"projection as an order of magnitude. {_sample_size_note(inputs)} "
            "Errors are taken as multiplicative and "
            "independent between points; a few points give a wide interval, and no interval "
            "covers a change of regime beyond the last point.",
        ]
    )


def markdown(inputs: ReportInputs, image: Callable[[str], str]) -> str:
    """The whole report; `image(name)` gives the reference of each chart (file or data URI)."""
    s = inputs.summary
    sections = [
        _header(s),
        _verdict(s),
        _glance(s),
        dilemma_section(s, image),
        diagnostics_section(inputs.records),
        per_class_section(inputs.records),
        _tradeoff(s, image),
        _projection(inputs, image),
        cost_section(inputs.records, s),
        gates_section(s),
        speed_section(inputs.records),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"
