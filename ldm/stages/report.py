"""The report stage: the trial's answer from every cell's evaluation (a variant, one seed).

Writes `data/reports/` (Markdown, a self-contained HTML page, charts, summary.json), logs it and
the trial's cost (summed over its stages, and per variant) to the trial's MLflow run, and
registers each cell's generator in the model registry; `candidate` goes to the recommended
variant's cell with the lowest gFD. A variant with several seeds is judged on its cells merged
(ldm/report/seeds.py); its convergence chart and projection use its first seed's curve.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ldm.config import Config
from ldm.errors import DataError
from ldm.files import write_json_atomic
from ldm.paths import Paths, cell_options, split_cell
from ldm.progress import notice
from ldm.records import ConvergenceCurve, EvaluateRecord, StageCost, trial_cost
from ldm.stages.result import StageResult
from ldm.tracker import Tracker

if TYPE_CHECKING:
    import numpy as np

    from ldm.report import ReportSummary
    from ldm.report.features import ReportFeatures
    from ldm.tracking.registry import Provenance


def report(cfg: Config, paths: Paths, tracker: Tracker) -> StageResult:
    import os

    from ldm import tracking
    from ldm.report import ReportHeader, write_report
    from ldm.report.dilemma import grid_of
    from ldm.report.seeds import merge_cells
    from ldm.tracking.registry import MAX_TAG_CHARS, Provenance

    cells, curves = [], {}
    for cell in cfg.cells():
        evaluation, curve = paths.stage_metrics(f"evaluate@{cell}"), paths.convergence(cell)
        if not evaluation.is_file() or not curve.is_file():
            raise DataError(
                f"report needs every cell's evaluation: {evaluation} or {curve} is missing; "
                f"run `ldm evaluate {cell_options(cell)}` (and the stages before it) first"
            )
        cells.append(EvaluateRecord.model_validate_json(evaluation.read_text()))
        variant = split_cell(cell)[0]
        if variant not in curves:  # the chart and the projection: the first seed's curve
            curves[variant] = ConvergenceCurve.model_validate_json(curve.read_text())
    # At the `cost` section's prices: the stages recorded hours, so a price change re-prices
    # every number below (each variant's cost, gates, the trial's total) without a rerun.
    cells = [record.priced(cfg.cost) for record in cells]
    features = report_features(cfg, paths, cells)
    by_variant: dict[str, list[EvaluateRecord]] = {}
    for record in cells:
        by_variant.setdefault(record.variant, []).append(record)
    records = merge_cells(by_variant, features)
    meta = json.loads((paths.prepared / "meta.json").read_text())
    tags = tracking.provenance_tags(paths.root)
    header = ReportHeader(
        trial=cfg.tracking.experiment,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        git_commit=None if tags["git_commit"] == "unknown" else tags["git_commit"],
        n_train=meta["counts"]["train"],
        n_val=meta["counts"]["val"],
        classes=sorted(meta["class_map"], key=meta["class_map"].get)
        if meta["num_classes"] > 1
        else [],
        resolution=meta["resolution"],
    )
    summary = write_report(
        paths.reports,
        records,
        curves,
        features,
        report=cfg.report,
        gates=cfg.promotion.gates,
        prices=cfg.cost,
        header=header,
        grid=grid_of(cfg.variants),
    )
    provenance = Provenance(
        run_id=os.environ.get(tracking.PARENT_RUN_ENV) or getattr(tracker, "run_id", ""),
        data_manifest_sha256=meta["source_manifest_sha256"],
        git_commit=tags["git_commit"],
        dvc_lock_sha256=tags.get("dvc_lock_sha256", ""),
        decision=summary.recommendation,
    )
    versions = register(cfg, paths, cells, summary, provenance)
    write_json_atomic(paths.reports / "registry.json", versions)
    # `cost/<variant>/*` per variant here; the trial's `cost/*` (its stages, each once, and
    # this report) in `document`, once the runner knows this stage's own cost. This run's own
    # `cost/*` is its own, as every stage run's is.
    per_variant = {}
    for record in records:
        per_variant |= record.cost.total.metrics(f"cost/{record.variant}/")
    parent = tracking.parent_tracker(paths.root)
    for target in [tracker] + ([parent] if parent is not None else []):
        target.log_metrics(per_variant | quality_metrics(summary))
        target.log_artifact(paths.reports)
        target.set_tags(
            {
                "ldm.recommended": summary.recommended or "not ready",
                "ldm.outcome": summary.outcome,
                "ldm.top_set": ", ".join(summary.top_set),
                "decision": summary.recommendation[:MAX_TAG_CHARS],
                **({"decision.plan": summary.plan[:MAX_TAG_CHARS]} if summary.plan else {}),
            }
        )
    upstream = trial_cost(records)

    def document(own_metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """The trial's total, this report's own cost included, on the trial's run; this run
        holds its own cost and that total's `trial_usd`."""
        total = upstream + StageCost.from_metrics(own_metrics)
        if parent is not None:
            parent.log_metrics(total.metrics())
        own = {k: v for k, v in own_metrics.items() if isinstance(v, int | float)}
        return own_metrics | {"trial_usd": total.usd}, own | {"trial_usd": total.usd}

    metrics = {"trial_usd": summary.trial_usd, "variants": float(len(records))}
    return StageResult(metrics, [], document=document)


def report_features(cfg: Config, paths: Paths, cells: list[EvaluateRecord]) -> ReportFeatures:
    """The rows behind every cell's numbers, as `reference` and `evaluate` kept them: each
    variant's replicates, one per seed, in the order of `cells`."""
    from ldm.metrics.comparison import Replicate
    from ldm.report.features import ReportFeatures
    from ldm.stages.kept_features import evaluation_features, reference_features

    network = cells[0].generation.feature_net
    replicates: dict[str, list[Replicate]] = {}
    for record in cells:
        kept = evaluation_features(paths, record.cell, network)
        replicate = Replicate(kept["generated"], kept["untrained"], kept["reconstructed"])
        replicates.setdefault(record.variant, []).append(replicate)
    bootstrap = cells[0].uncertainty
    for record in cells:  # one resampling for every cell, as the comparison assumes
        own = record.uncertainty
        settings = None if own is None else (own.draws, own.level, own.seed)
        if bootstrap is None or settings != (bootstrap.draws, bootstrap.level, bootstrap.seed):
            raise DataError(
                f"{paths.stage_metrics('evaluate@' + record.cell)} predates intervals or was "
                "resampled with other evaluate.bootstrap settings than the others: run "
                f"`ldm evaluate {cell_options(record.cell)}` again"
            )
    val = reference_features(paths, "val", network)[0]
    variants = {name: tuple(found) for name, found in replicates.items()}
    check_kept_rows(cells, val, variants)
    return ReportFeatures(
        network=network,
        val=val,
        train=reference_features(paths, "train", network)[0],
        variants=variants,
        draws=bootstrap.draws,
        level=bootstrap.level,
        seed=bootstrap.seed,
        kid_subset_size=cfg.evaluate.kid_subset_size,
    )


def check_kept_rows(cells: list[EvaluateRecord], val: np.ndarray, variants: dict) -> None:
    """The kept rows give each cell's own gFD: else an evaluation and its features come from
    different runs (a copied file), and a verdict on them would contradict the table. `cells`
    in the order of each variant's replicates."""
    from ldm.metrics.frechet import frechet_distance_between

    seen: dict[str, int] = {}
    for record in cells:
        index = seen[record.variant] = seen.get(record.variant, -1) + 1
        fd = frechet_distance_between(val, variants[record.variant][index].generated)
        if abs(fd - record.generation.fd) > 1e-6 * max(1.0, abs(record.generation.fd)):
            raise DataError(
                f"data/evaluations/{record.cell}/features.npz gives gFD {fd:.6g}, its record "
                f"says {record.generation.fd:.6g}: run `ldm evaluate {cell_options(record.cell)}`"
                " again"
            )


def quality_metrics(summary: ReportSummary) -> dict[str, float]:
    """Each variant's key numbers as `quality/<variant>/<name>`: what the decision rests on,
    on the trial's run beside its cost."""
    metrics = {}
    for v in summary.variants:
        values = {
            "gfd": v.gfd,
            "relative_fd": v.relative_fd,
            "precision": v.precision,
            "recall": v.recall,
            "psnr": v.psnr,
            "rfd": v.rfd,
            "cfg_scale": v.cfg_scale,  # the guidance chosen on the train split
        }
        metrics |= {f"quality/{v.variant}/{k}": x for k, x in values.items() if x is not None}
        for name, interval in v.intervals.items():
            if name in values:
                metrics |= {f"quality/{v.variant}/{name}_lo": interval.lo}
                metrics |= {f"quality/{v.variant}/{name}_hi": interval.hi}
        if v.seeds > 1:  # the numbers are means over seeds: their spread over them beside
            metrics[f"quality/{v.variant}/seeds"] = float(v.seeds)
            spreads = {k: s for k, s in v.spreads.items() if k in values}
            metrics |= {f"quality/{v.variant}/{k}_sd": s for k, s in spreads.items()}
    for c in summary.comparisons:  # what the verdict rests on
        # named in a fixed order, signed: the same key in every trial, whichever variant wins
        first, second = sorted((c.better, c.worse))
        sign = 1.0 if first == c.worse else -1.0  # first - second
        pair = f"verdict/{first}_minus_{second}/gfd"
        ends = sorted((sign * c.lo, sign * c.hi))
        metrics |= {pair: sign * c.gfd_difference, f"{pair}_lo": ends[0], f"{pair}_hi": ends[1]}
    return metrics


def register(
    cfg: Config,
    paths: Paths,
    cells: list[EvaluateRecord],
    summary: ReportSummary,
    provenance: Provenance,
) -> dict:
    """Each cell's generator as a version of `registry.model_name` (an unchanged one is found
    again, not registered twice); of the recommended variant's cells, the one with the lowest
    gFD gets the alias `candidate`: the variant is what the trial chose, that cell its best
    trained instance.

    A trial that recommends nothing takes `candidate` from the version an earlier trial gave
    it: `ldm models`, `ldm serve` and `ldm promote` would otherwise act on a stale pick.
    """
    from ldm.tracking.promotion import clear_candidate, set_candidate
    from ldm.tracking.registry import register_generator

    name = cfg.registry.model_name
    recommended = summary.recommended
    versions, candidate, withdrawn = {}, None, None
    own = [record for record in cells if record.variant == recommended]
    best = min(own, key=lambda r: r.generation.fd).cell if own else None
    for record in cells:
        tokenizer, diffusion = paths.tokenizer(record.cell), paths.diffusion(record.cell)
        # registered with the guidance its evaluation chose (older records: sample.cfg_scale)
        chosen = record.generation.cfg_scale
        sampler = (
            cfg.sample if chosen is None else cfg.sample.model_copy(update={"cfg_scale": chosen})
        )
        registration = register_generator(
            paths.root, name, tokenizer, diffusion, sampler, record, provenance
        )
        versions[record.cell] = registration.version
        if record.cell == best:
            candidate = registration.version
            set_candidate(paths.root, name, candidate, summary.recommendation)
    if recommended is None:
        reason = "the latest trial is not ready: no variant passes the staging gates"
        withdrawn = clear_candidate(paths.root, name, reason)
        if withdrawn is not None:
            notice(f"report: version {withdrawn} no longer holds `candidate`: {reason}")
    return {
        "model_name": name,
        "versions": versions,
        "candidate": candidate,
        "candidate_withdrawn": withdrawn,
    }
