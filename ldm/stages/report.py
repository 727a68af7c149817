"""The report stage: the trial's answer from every variant's evaluation.

Writes `data/reports/` (Markdown, a self-contained HTML page, charts, summary.json), logs it and
the trial's cost (summed over its stages, and per variant) to the trial's MLflow run, and
registers each variant's generator in the model registry, the recommended one as `candidate`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from ldm.config import Config
from ldm.errors import DataError
from ldm.files import write_json_atomic
from ldm.paths import Paths
from ldm.progress import notice
from ldm.records import ConvergenceCurve, EvaluateRecord, trial_cost
from ldm.stages.result import StageResult
from ldm.tracker import Tracker

if TYPE_CHECKING:
    from ldm.report import ReportSummary
    from ldm.tracking.registry import Provenance


def report(cfg: Config, paths: Paths, tracker: Tracker) -> StageResult:
    import os

    from ldm import tracking
    from ldm.report import ReportHeader, write_report
    from ldm.tracking.registry import Provenance

    records, curves = [], {}
    for variant in cfg.variants:
        evaluation, curve = paths.stage_metrics(f"evaluate@{variant}"), paths.convergence(variant)
        if not evaluation.is_file() or not curve.is_file():
            raise DataError(
                f"report needs every variant's evaluation: {evaluation} or {curve} is missing; "
                f"run `ldm evaluate --variant {variant}` (and the stages before it) first"
            )
        records.append(EvaluateRecord.model_validate_json(evaluation.read_text()))
        curves[variant] = ConvergenceCurve.model_validate_json(curve.read_text())
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
        report=cfg.report,
        gates=cfg.promotion.gates,
        prices=cfg.cost,
        header=header,
    )
    provenance = Provenance(
        run_id=os.environ.get(tracking.PARENT_RUN_ENV) or getattr(tracker, "run_id", ""),
        data_manifest_sha256=meta["source_manifest_sha256"],
        git_commit=tags["git_commit"],
        dvc_lock_sha256=tags.get("dvc_lock_sha256", ""),
    )
    versions = register(cfg, paths, records, summary.recommended, provenance)
    write_json_atomic(paths.reports / "registry.json", versions)
    # `cost/*` summed over the trial's stages (each once), and `cost/<variant>/*` per variant
    costs = trial_cost(records).metrics()
    for record in records:
        costs |= record.cost.total.metrics(f"cost/{record.variant}/")
    parent = tracking.parent_tracker(paths.root)
    for target in [tracker] + ([parent] if parent is not None else []):
        target.log_metrics(costs | quality_metrics(summary))
        target.log_artifact(paths.reports)
        target.set_tags(
            {
                "ldm.recommended": summary.recommended or "not ready",
                "decision": summary.recommendation[:5000],
            }
        )
    metrics = {"trial_usd": summary.trial_usd, "variants": float(len(records))}
    return StageResult(metrics, [])


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
        }
        metrics |= {f"quality/{v.variant}/{k}": x for k, x in values.items() if x is not None}
    return metrics


def register(
    cfg: Config,
    paths: Paths,
    records: list[EvaluateRecord],
    recommended: str | None,
    provenance: Provenance,
) -> dict:
    """Each variant's generator as a version of `registry.model_name` (an unchanged one is
    found again, not registered twice); the recommended one gets the alias `candidate`.

    A trial that recommends nothing takes `candidate` from the version an earlier trial gave
    it: `ldm models`, `ldm serve` and `ldm promote` would otherwise act on a stale pick.
    """
    from ldm.tracking.promotion import clear_candidate, set_candidate
    from ldm.tracking.registry import register_generator

    name = cfg.registry.model_name
    versions, candidate, withdrawn = {}, None, None
    for record in records:
        tokenizer, diffusion = paths.tokenizer(record.variant), paths.diffusion(record.variant)
        registration = register_generator(
            paths.root, name, tokenizer, diffusion, cfg.sample, record, provenance
        )
        versions[record.variant] = registration.version
        if record.variant == recommended:
            candidate = registration.version
            reason = f"the report recommends {recommended}: it passes the staging gates"
            set_candidate(paths.root, name, candidate, reason)
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
