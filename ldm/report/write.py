"""Write the report folder: Markdown, HTML, charts and `summary.json`, swapped in complete."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ldm.config import CostConfig, GatesConfig, ReportConfig
from ldm.errors import LdmError
from ldm.files import swap_in
from ldm.records import ConvergenceCurve, EvaluateRecord, trial_cost
from ldm.report.charts import convergence_chart, dilemma_chart, tradeoff_chart
from ldm.report.dilemma import build as build_dilemma
from ldm.report.document import CONVERGENCE_PNG, TRADEOFF_PNG, ReportInputs, markdown
from ldm.report.features import ReportFeatures
from ldm.report.html import data_uri, to_html
from ldm.report.projection import curve_size_shift, project
from ldm.report.recommend import check_inputs, recommend, summarise_variant
from ldm.report.summary import ReportHeader, ReportSummary
from ldm.report.tables import DILEMMA_PNG
from ldm.report.verdicts import compared, plan_for

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
FILES = (REPORT_MD, REPORT_HTML, TRADEOFF_PNG, CONVERGENCE_PNG, SUMMARY_JSON)
# A variant's place in the grid: (f, d, regulariser), see ldm.report.dilemma.grid_point_of.
Grid = dict[str, tuple[int, int, str]]


def price_per_hour(compute_unit: str, prices: CostConfig) -> float:
    if compute_unit == "gpu_hours":
        return prices.gpu_hour_usd
    if compute_unit == "cpu_hours":
        return prices.cpu_hour_usd
    raise LdmError(
        f"report: a convergence curve counts compute in {compute_unit!r}; expected 'gpu_hours' "
        "or 'cpu_hours'. Rerun `ldm train-diffusion` with this version of ldm"
    )


def summarise(
    records: list[EvaluateRecord],
    curves: dict[str, ConvergenceCurve],
    features: ReportFeatures,
    report: ReportConfig,
    gates: GatesConfig,
    prices: CostConfig,
    header: ReportHeader,
    grid: Grid | None = None,
) -> ReportSummary:
    """Every number and the verdict, without writing anything. `grid` places each variant in
    the dilemma's grid; None (records without a config, as in a report rebuilt from files):
    no dilemma section."""
    check_inputs(records, curves)
    variants = []
    for record in records:
        curve = curves[record.variant]
        projection = project(
            curve,
            floor=record.reference.fd_train_val,
            target_fd=report.target_fd,
            price_per_hour=price_per_hour(curve.compute_unit, prices),
            budget_multiple=report.projection_budget_multiple,
            final_fd=record.generation.fd,
            target_shift=curve_size_shift(
                curve, features.val, features.variants[record.variant][0].generated
            ),
        )
        variants.append(summarise_variant(record, gates, projection))
    comparisons = compared(features, report.min_effect, report.seed_spread_prior)
    verdict = recommend(variants, comparisons)
    num_samples = records[0].generation.num_samples
    dilemma = build_dilemma(
        grid or {},
        {v.variant: v for v in variants},
        comparisons,
        reconstructions(features, grid or {}),
        features.level,
        report.min_effect,
        num_samples,
        (verdict.recommended, verdict.headline, verdict.top_set),
    )
    return ReportSummary(
        header=header,
        target_fd=report.target_fd,
        recommended=verdict.recommended,
        outcome=verdict.outcome,
        recommendation=verdict.text,
        evidence=verdict.evidence,
        top_set=verdict.top_set,
        comparisons=comparisons,
        plan=plan_for(
            verdict.outcome,
            verdict.top_set,
            variants,
            comparisons,
            num_samples,
        ),
        failed_gates=verdict.failed,
        trial_usd=trial_cost(records).usd,
        variants=variants,
        files=list(FILES) + ([DILEMMA_PNG] if dilemma else []),
        dilemma=dilemma,
    )


def reconstructions(features: ReportFeatures, grid: Grid) -> dict | None:
    """Every variant's rFD in shared draws, for a grid of two or more widths whose evaluations
    kept their reconstruction rows; None otherwise."""
    from ldm.metrics.bootstrap import Resampling
    from ldm.metrics.comparison import reconstruction_draws
    from ldm.progress import progress_bar

    rows = {
        name: [r.reconstructed for r in replicates]
        for name, replicates in features.variants.items()
    }
    widths = {d for _, d, _ in grid.values()}
    if len(widths) < 2 or any(r is None for found in rows.values() for r in found):
        return None
    resampling = Resampling(features.draws, features.level, features.seed)
    with progress_bar("reconstruction draws", features.draws) as advance:
        return reconstruction_draws(features.val, rows, resampling, advance)


def write_report(
    out_dir: Path,
    records: list[EvaluateRecord],
    curves: dict[str, ConvergenceCurve],
    features: ReportFeatures,
    *,
    report: ReportConfig,
    gates: GatesConfig,
    prices: CostConfig,
    header: ReportHeader,
    grid: Grid | None = None,
) -> ReportSummary:
    """Write `out_dir` (report.md, report.html, the PNG charts, summary.json) and return the
    summary. The files are built in a sibling folder and swapped in whole, so a failure leaves
    the previous report as it was."""
    summary = summarise(records, curves, features, report, gates, prices, header, grid)
    inputs = ReportInputs(records=records, curves=curves, report=report, summary=summary)
    projections = {v.variant: v.projection for v in summary.variants}

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tradeoff_chart(records, tmp / TRADEOFF_PNG)
        convergence_chart(records, curves, projections, report.target_fd, tmp / CONVERGENCE_PNG)
        if summary.dilemma is not None:
            dilemma_chart(summary.dilemma, records[0].generation.feature_net, tmp / DILEMMA_PNG)
        (tmp / REPORT_MD).write_text(markdown(inputs, lambda name: name), encoding="utf-8")
        page = markdown(inputs, lambda name: data_uri(tmp / name))
        title = f"Trial report: {header.trial}"
        (tmp / REPORT_HTML).write_text(to_html(page, title), encoding="utf-8")
        (tmp / SUMMARY_JSON).write_text(summary.to_json(), encoding="utf-8")
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
