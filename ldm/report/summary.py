"""What the report decided, as data: `summary.json`, and the rows `ldm run` prints at its end.

Plain pydantic and no numpy or matplotlib, so the CLI can read a finished report quickly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ldm.records import Interval
from ldm.report.grid import Dilemma

ABSENT = "—"  # a number nothing measured; never shown as 0


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportHeader(Model):
    """Who and what the report is about."""

    trial: str  # the trial's name, e.g. the MLflow experiment
    created: str  # when the report was written, ISO 8601
    git_commit: str | None  # of the code that ran the trial; None outside git
    n_train: int = Field(ge=0)
    n_val: int = Field(ge=0)
    classes: list[str]  # empty when the images carry no class labels
    resolution: int = Field(ge=1)


class Projection(Model):
    """Compute and money for one variant's generator to reach the target gFD."""

    status: Literal["reached", "projected", "not_reached", "too_few_points"]
    text: str  # the sentence the report shows
    compute_unit: str  # "gpu_hours" or "cpu_hours", as the curve recorded
    price_per_hour: float  # USD per compute-hour of that unit
    spent_compute_hours: float  # the curve's last point: what this trial's generator used
    limit_compute_hours: float  # projection_budget_multiple x spent; beyond it: "not reached"
    target_fd: float
    floor: float  # what the fit falls to: the curve's own (at sample_size) where it has one
    n_points: int  # curve points the fit used
    # Generated images behind each curve point, and the target moved to that sample size
    # (`curve_size_shift`). target_at_sample_size None: the points were compared with the
    # evaluation's floor and target (a curve from before its own floor). Both None in summaries
    # written before them.
    sample_size: int | None = None
    target_at_sample_size: float | None = None
    a: float | None = None  # FD(c) = floor + a * c^(-b)
    b: float | None = None
    b_stderr: float | None = None
    compute_hours: float | None = None  # central estimate; None: beyond the limit or unknown
    compute_low: float | None = None  # the interval; a None bound lies beyond the limit
    compute_high: float | None = None
    usd: float | None = None
    usd_low: float | None = None
    usd_high: float | None = None


class GateCheck(Model):
    name: str
    threshold: float
    value: float | None
    passed: bool
    lo: float | None = None  # the value's interval; a gate reads its far end (gates.py)
    hi: float | None = None
    text: str  # GateResult.describe()


class Comparison(Model):
    """Two variants' gFDs compared with a paired bootstrap (ldm/metrics/comparison.py)."""

    better: str  # the lower gFD by point estimate
    worse: str
    gfd_difference: float  # worse - better, >= 0
    # The verdict's interval at `level`: the paired bootstrap's, widened by the retraining
    # spread where it was assumed rather than measured (ldm/report/verdicts.py).
    lo: float
    hi: float
    se: float
    level: float
    min_effect: float  # the smallest gFD gap counted as real: report.min_effect x better's gFD
    min_effect_share: float = 0.0  # report.min_effect itself
    detectable: bool  # the interval excludes 0 and the gap reaches min_effect
    sampling_lo: float = 0.0  # the paired bootstrap alone: images (and seeds, when several)
    sampling_hi: float = 0.0
    sampling_se: float = 0.0
    # One seed's spread of the gap from retraining: √(s_a² + s_b²) of the two variants' gFD
    # spreads over seeds, measured with several seeds, else assumed (report.seed_spread_prior)
    retraining_se: float = 0.0
    retraining_assumed: bool = False
    relative_fd_difference: float | None = None  # worse - better, with its interval
    relative_fd_lo: float | None = None
    relative_fd_hi: float | None = None
    kid_difference: float | None = None  # mean and spread over KID's paired subsets
    kid_difference_std: float | None = None
    text: str  # the verdict as a sentence


class VariantSummary(Model):
    variant: str
    self_graded: bool  # measured in a network its tokenizer was trained against
    psnr: float
    rfd: float
    rfd_net: str
    gfd: float
    gfd_net: str
    fd_floor: float  # train vs val: what a perfect generator scores
    fd_ceiling: float  # decoded N(0, I) latents: what an untrained generator scores
    relative_fd: float  # 0 at the floor, 1 at the ceiling
    precision: float
    recall: float
    density: float
    coverage: float
    usd: float  # the variant's whole trial cost, shared stages included
    compute_hours: float  # GPU-hours when the variant used GPUs, else CPU-hours
    compute_unit: str
    energy_kwh: float | None
    gap_closed_per_usd: float | None  # (1 - relative_fd) / usd; None when nothing was paid
    # Bootstrap intervals (`interval_level`) by the names above: gfd, relative_fd, precision,
    # recall, density, coverage; empty for an evaluation from before intervals.
    intervals: dict[str, Interval] = {}
    interval_level: float | None = None
    # Each number's standard deviation over the training seeds, by the names above plus psnr,
    # rfd, kid, fd_infinity; empty with one seed. With several, gfd's and relative_fd's
    # intervals resample the seeds and then the rows; the others' are the typical within-seed
    # interval around the mean.
    spreads: dict[str, float] = {}
    cfg_scale: float | None = None  # the guidance its numbers were measured at (chosen on train)
    kid: float | None = None  # in gfd_net's space
    kid_std: float | None = None
    fd_infinity: float | None = None
    fd_gain_per_compute_hour: float | None  # (ceiling - gFD) / compute_hours
    staging: list[GateCheck]
    passed_staging: bool
    production: list[GateCheck]
    passed_production: bool  # the gates alone; promotion also needs the version in staging
    projection: Projection
    # What one more training seed of this variant costs: its own stages (tokenizer, latents,
    # DiT, evaluation), not the shared ones (validation, preparation, reference features).
    per_seed_usd: float = 0.0
    per_seed_compute_hours: float = 0.0  # in compute_unit
    seeds: int = 1  # training seeds behind its numbers
    seed_spread: float | None = None  # standard deviation of its gFD over seeds; None: one seed


class ReportSummary(Model):
    header: ReportHeader
    target_fd: float
    recommended: str | None  # None: no variant passed the staging gates
    # recommended: one variant is better than every other passing one; tie: several are
    # not detectably different and the cheapest is recommended; not_ready: none passes
    outcome: Literal["recommended", "tie", "not_ready"]
    recommendation: str  # the sentence, for logs and the terminal
    evidence: str = ""  # what the recommendation rests on: the sentence's part in brackets
    top_set: list[str] = []  # the best passing variant and every passing one not detectably worse
    comparisons: list[Comparison] = []  # every pair of variants
    plan: str | None = None  # what a trial that could decide would need and cost
    failed_gates: dict[str, list[str]]  # variant -> descriptions of its failed staging gates
    trial_usd: float  # every stage counted once (shared stages are in each variant's total)
    variants: list[VariantSummary]
    files: list[str]  # what the report folder holds
    # A grid of two or more latent widths: does a wider latent pay off, which regulariser at
    # each width, which latent space to pick (ldm/report/dilemma.py); None otherwise.
    dilemma: Dilemma | None = None

    @classmethod
    def read(cls, path: Path) -> ReportSummary:
        return cls.model_validate_json(Path(path).read_text())

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for people: about `digits` significant figures, never scientific below 1e6."""
    if value is None:
        return ABSENT
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    size = abs(value)
    if size >= 10 ** (digits - 1) or value == 0:
        return f"{value:,.0f}"
    if size >= 1e-3:
        decimals = digits - 1 - int(f"{size:e}".split("e")[1])
        return f"{value:,.{decimals}f}"
    return f"{value:.{digits - 1}e}"


def usd(value: float | None) -> str:
    if value is None:
        return ABSENT
    return f"${value:,.2f}" if abs(value) >= 1 or value == 0 else f"${fmt(value, 2)}"


@dataclass(frozen=True)
class TerminalSummary:
    """The table `ldm run` prints after the trial: one row per variant, then a verdict."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    recommendation: str
    note: str  # how to read the brackets


def with_interval(v: VariantSummary, name: str, digits: int = 3) -> str:
    """`104 [99.6..110]`: the number and its bootstrap interval, when one was measured; with
    several seeds `104 ± 2.1 [99.6..110]`, the mean and its standard deviation over them."""
    value, interval = getattr(v, name), v.intervals.get(name)
    text = fmt(value, digits)
    if name in v.spreads:
        text += f" ± {fmt(v.spreads[name], digits)}"
    if interval is None:
        return text
    return f"{text} [{fmt(interval.lo, digits)}..{fmt(interval.hi, digits)}]"


def interval_note(summary: ReportSummary) -> str:
    """What the brackets mean, or that nothing measured them."""
    level = summary.variants[0].interval_level
    if level is None:
        return "No intervals: these evaluations predate them (run `ldm evaluate` again)."
    note = (
        f"[lo..hi]: {level:.0%} bootstrap interval (val and generated images resampled); "
        "floor / ceiling: reference lines, not an interval."
    )
    seeds = max(v.seeds for v in summary.variants)
    if seeds > 1:
        note += (
            f" With {seeds} training seeds, m ± s is the mean over them and their standard "
            "deviation; the gFD's and relative FD's intervals resample the seeds, then the "
            "images (both sources of noise), the others are the typical interval of one seed."
        )
    return note


def standing(summary: ReportSummary, variant: str) -> str:
    """`yes`, `top set` (not detectably worse than the best), or nothing."""
    if variant == summary.recommended:
        return "yes"
    return "top set" if variant in summary.top_set else ""


def summary_rows(summary: ReportSummary) -> TerminalSummary:
    """Per variant the key numbers with their intervals and reference lines, its cost, and the
    verdict. The reference lines get a column of their own, written `floor / ceiling`, so that
    they cannot be read as an interval."""
    first = summary.variants[0]
    columns = (
        "variant",
        "PSNR (dB)",
        f"rFD ({first.rfd_net})",
        f"gFD ({first.gfd_net})",
        "floor / ceiling",
        "relative FD",
        "precision",
        "recall",
        "cost (USD)",
        "recommended",
    )
    rows = [
        (
            v.variant + (" (self-graded)" if v.self_graded else ""),
            with_interval(v, "psnr"),
            with_interval(v, "rfd"),
            with_interval(v, "gfd"),
            f"{fmt(v.fd_floor)} / {fmt(v.fd_ceiling)}",
            with_interval(v, "relative_fd", 2),
            with_interval(v, "precision", 2),
            with_interval(v, "recall", 2),
            usd(v.usd),
            standing(summary, v.variant),
        )
        for v in summary.variants
    ]
    verdict = summary.recommendation + (f"\n{summary.plan}" if summary.plan else "")
    return TerminalSummary(columns, rows, verdict, interval_note(summary))
