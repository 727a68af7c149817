"""The verdict: gates per variant, quality per money, and which generator the report recommends.

The staging gates are the ones `ldm promote --to staging` checks, through the same function, so
the recommended variant is one promotion accepts.
"""

from __future__ import annotations

from dataclasses import asdict

from ldm.config import GatesConfig
from ldm.errors import LdmError
from ldm.records import ConvergenceCurve, EvaluateRecord, Interval
from ldm.report.gates import GateResult, check_gates, gate_values
from ldm.report.summary import GateCheck, Projection, VariantSummary, fmt


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
            "data/metrics/convergence@<variant>.json, rerun it for these variants"
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


def summarise_variant(
    record: EvaluateRecord, gates: GatesConfig, projection: Projection
) -> VariantSummary:
    values = gate_values(record)
    staging = check_gates(gates.staging, values)
    production = check_gates(gates.production, values)
    ref, gen, total = record.reference, record.generation, record.cost.total
    relative = ref.relative(gen.fd)
    # GPU-hours when the variant used a GPU anywhere, else CPU-hours
    gpu = total.gpu_hours > 0
    hours, unit = (total.gpu_hours, "gpu_hours") if gpu else (total.cpu_hours, "cpu_hours")
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
        intervals=summary_intervals(record),
        interval_level=record.uncertainty.level if record.uncertainty else None,
        kid=gen.kid,
        kid_std=gen.kid_std,
        fd_infinity=gen.fd_infinity,
        staging=_checks(staging),
        passed_staging=all(r.passed for r in staging),
        production=_checks(production),
        passed_production=all(r.passed for r in production),
        projection=projection,
    )


def recommend(variants: list[VariantSummary]) -> tuple[str | None, str, dict[str, list[str]]]:
    """(variant or None, the sentence, failed staging gates per variant).

    Among the variants that pass every staging gate, the lowest gFD wins; on a tie, the
    cheaper one. Comparing raw gFDs is fair here: check_inputs made sure one network measured
    them all.
    """
    failed = {v.variant: [g.text for g in v.staging if not g.passed] for v in variants}
    failed = {name: texts for name, texts in failed.items() if texts}
    passing = [v for v in variants if v.passed_staging]
    if not passing:
        listed = "; ".join(f"{name}: {', '.join(texts)}" for name, texts in failed.items())
        return None, f"not ready: no variant passes the staging gates ({listed})", failed
    best = min(passing, key=lambda v: (v.gfd, v.usd))
    text = (
        f"recommended: {best.variant} (gFD {fmt(best.gfd)} in {best.gfd_net}, "
        f"floor {fmt(best.fd_floor)}, ceiling {fmt(best.fd_ceiling)}; passes the staging gates)"
    )
    return best.variant, text, failed
