"""The verdict: gates per variant, quality per money, and which generator the report recommends.

The staging gates are the ones `ldm promote --to staging` checks, through the same function, so
the recommended variant is one promotion accepts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from ldm.config import GatesConfig
from ldm.errors import LdmError
from ldm.records import ConvergenceCurve, EvaluateRecord, Interval
from ldm.report.gates import GateResult, check_gates, gate_intervals, gate_values
from ldm.report.summary import (
    Comparison,
    GateCheck,
    Projection,
    VariantSummary,
    usd,
    with_interval,
)
from ldm.report.verdicts import between, gap_text, top_set

Outcome = Literal["recommended", "tie", "not_ready"]


def check_inputs(records: list[EvaluateRecord], curves: dict[str, ConvergenceCurve]) -> None:
    """One record and one curve per variant, all measured in the same networks."""
    if not records:
        raise LdmError("report: no evaluation records; run `ldm evaluate` for each variant first")
    names = [r.variant for r in records]
    if len(set(names)) != len(names):
        raise LdmError(f"report: a variant has more than one evaluation record: {names}")
    missing = [n for n in names if n not in curves]
    if missing:
        raise LdmError(
            f"report: no convergence curve for {missing}; `ldm train-diffusion` writes "
            "data/metrics/convergence@<cell>.json, rerun it for these variants"
        )
    for name, curve in curves.items():
        if name in names and curve.variant != name:
            raise LdmError(f"report: the curve given for {name!r} is {curve.variant!r}'s")
    for label, nets in (
        ("gFD", {r.generation.feature_net for r in records}),
        ("rFD", {r.tokenizer.feature_net for r in records}),
        ("reference FD", {r.reference.feature_net for r in records}),
    ):
        if len(nets) > 1:
            raise LdmError(
                f"report: the variants' {label} were measured in different networks {sorted(nets)}"
                "; distances from different networks cannot be compared. Rerun `ldm evaluate` "
                "for every variant with the same evaluate.features"
            )


def _checks(results: list[GateResult]) -> list[GateCheck]:
    return [GateCheck(**asdict(r), text=r.describe()) for r in results]


# The report's names of the numbers with intervals -> their names in the evaluation record.
RECORD_NAMES = {
    "gfd": "fd",
    "relative_fd": "relative_fd",
    "precision": "precision",
    "recall": "recall",
    "density": "density",
    "coverage": "coverage",
}


def summary_intervals(record: EvaluateRecord) -> dict[str, Interval]:
    found = {name: record.interval(source) for name, source in RECORD_NAMES.items()}
    return {name: interval for name, interval in found.items() if interval is not None}


def summary_spreads(record: EvaluateRecord) -> dict[str, float]:
    """Each number's standard deviation over the seeds, by the report's names; empty for one
    seed."""
    names = RECORD_NAMES | {
        "psnr": "psnr",
        "rfd": "rfd",
        "kid": "kid",
        "fd_infinity": "fd_infinity",
    }
    spread = record.seed_spread or {}
    return {name: spread[source] for name, source in names.items() if source in spread}


def summarise_variant(
    record: EvaluateRecord, gates: GatesConfig, projection: Projection
) -> VariantSummary:
    values, intervals = gate_values(record), gate_intervals(record)
    staging = check_gates(gates.staging, values, intervals)
    production = check_gates(gates.production, values, intervals)
    ref, gen, total = record.reference, record.generation, record.cost.total
    relative = ref.relative(gen.fd)
    # GPU-hours when the variant used a GPU anywhere, else CPU-hours
    gpu = total.gpu_hours > 0
    hours, unit = (total.gpu_hours, "gpu_hours") if gpu else (total.cpu_hours, "cpu_hours")
    # what one more seed costs: a cell's own stages (named after it), not the shared ones,
    # averaged over the seeds the record holds
    own = [cost for stage, cost in record.cost.stages.items() if "@" in stage]
    seeds = record.seed_count
    own_hours = sum(c.gpu_hours if gpu else c.cpu_hours for c in own) / seeds
    return VariantSummary(
        variant=record.variant,
        self_graded=record.self_graded,
        psnr=record.tokenizer.psnr,
        rfd=record.tokenizer.rfd,
        rfd_net=record.tokenizer.feature_net,
        gfd=gen.fd,
        gfd_net=gen.feature_net,
        fd_floor=ref.fd_train_val,
        fd_ceiling=ref.fd_random_latents,
        relative_fd=relative,
        precision=gen.precision,
        recall=gen.recall,
        density=gen.density,
        coverage=gen.coverage,
        usd=total.usd,
        compute_hours=hours,
        compute_unit=unit,
        energy_kwh=total.energy_kwh,
        gap_closed_per_usd=(1 - relative) / total.usd if total.usd > 0 else None,
        fd_gain_per_compute_hour=((ref.fd_random_latents - gen.fd) / hours if hours > 0 else None),
        per_seed_usd=sum(c.usd for c in own) / seeds,
        per_seed_compute_hours=own_hours,
        intervals=summary_intervals(record),
        spreads=summary_spreads(record),
        seeds=record.seed_count,
        seed_spread=(record.seed_spread or {}).get("fd"),
        interval_level=record.uncertainty.level if record.uncertainty else None,
        cfg_scale=gen.cfg_scale,
        kid=gen.kid,
        kid_std=gen.kid_std,
        fd_infinity=gen.fd_infinity,
        staging=_checks(staging),
        passed_staging=all(r.passed for r in staging),
        production=_checks(production),
        passed_production=all(r.passed for r in production),
        projection=projection,
    )


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    recommended: str | None  # None: not ready
    headline: str  # `recommended: plain`, `no detectable difference between ...`, `not ready`
    evidence: str  # what it rests on: the gaps and their intervals, or the failed gates
    top_set: list[str]
    failed: dict[str, list[str]]  # failed staging gates per variant

    @property
    def text(self) -> str:
        """The one sentence of the terminal, the report, MLflow and the registry."""
        return f"{self.headline} ({self.evidence})"


# Costs closer than this share are the same cost: wall-clock meters jitter by that much, and a
# tie broken by jitter would move `candidate` at random.
SAME_COST = 0.05


def recommend(variants: list[VariantSummary], comparisons: list[Comparison]) -> Verdict:
    """Only variants that pass every staging gate can be recommended. Among them the top set
    (ldm/report/verdicts.py) holds the best by gFD and every one not detectably worse: alone,
    it is recommended; with company, the cheapest of them is, and the sentence says that the
    trial could not tell them apart. Comparing raw gFDs is fair: check_inputs made sure one
    network measured them all.
    """
    failed = {v.variant: [g.text for g in v.staging if not g.passed] for v in variants}
    failed = {name: texts for name, texts in failed.items() if texts}
    passing = [v for v in variants if v.passed_staging]
    if not passing:
        listed = "; ".join(f"{name}: {', '.join(texts)}" for name, texts in failed.items())
        headline = "not ready: no variant passes the staging gates"
        return Verdict("not_ready", None, headline, listed, [], failed)
    top = top_set(passing, comparisons)
    by_name = {v.variant: v for v in variants}
    if len(top) == 1:
        best = by_name[top[0]]
        beaten = [between(comparisons, best.variant, v.variant) for v in passing if v is not best]
        evidence = [
            f"gFD {with_interval(best, 'gfd')} in {best.gfd_net}",
            *(c.text for c in beaten),
            "passes the staging gates" + ("" if beaten else "; the only variant that does"),
        ]
        return Verdict(
            "recommended",
            best.variant,
            f"recommended: {best.variant}",
            "; ".join(evidence),
            top,
            failed,
        )
    members = [by_name[name] for name in top]
    lowest = min(v.usd for v in members)
    # the cheapest, and among those within SAME_COST of it, the better gFD
    cheapest = min(
        (v for v in members if v.usd <= lowest * (1 + SAME_COST)), key=lambda v: (v.gfd, v.usd)
    )
    gaps = [
        f"{v.variant}: {gap_text(between(comparisons, top[0], v.variant))}" for v in members[1:]
    ]
    listed = ", ".join(v.variant for v in members[:-1]) + f" and {members[-1].variant}"
    costs = ", ".join(f"{v.variant} {usd(v.usd)}" for v in members)
    clearly = all(v.usd > lowest * (1 + SAME_COST) for v in members if v is not cheapest)
    pick = (
        f"recommending the cheaper, {cheapest.variant}"
        if clearly
        else f"recommending {cheapest.variant}, among those that cost about the same (within "
        f"{SAME_COST:.0%}) the lower gFD"
    )
    headline = f"no detectable difference between {listed}: {pick}"
    evidence = [*gaps, costs, f"{cheapest.variant} passes the staging gates"]
    return Verdict("tie", cheapest.variant, headline, "; ".join(evidence), top, failed)
