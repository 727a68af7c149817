"""The data-quality suite (Great Expectations 1.x): is this folder good enough for a trial?

Three tables are checked: every file, the accepted manifest, and images per class. The results go
to `gx_validation.json` and to HTML Data Docs, and each failed expectation becomes one short line
the CLI can print.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ldm.config import ValidateConfig

SITE = "ldm_local_site"


@dataclass(frozen=True)
class QualityResult:
    passed: bool
    failed: list[str]  # one short line per failed expectation
    result_json: Path
    docs_index: Path


def _tables(files: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The three tables the suite checks, keyed by the name used in messages and Data Docs."""
    manifest = files.filter(pl.col("status") == "accepted").with_columns(
        pixels=pl.col("width") * pl.col("height")
    )
    classes = (
        manifest.group_by("class").agg(n_images=pl.len().cast(pl.Int64)).sort("class")
        if manifest.height
        else pl.DataFrame(schema={"class": pl.String, "n_images": pl.Int64})
    )
    return {"files": files, "manifest": manifest, "classes": classes}


def _expectations(cfg: ValidateConfig) -> dict[str, list[Any]]:
    """Expectations per table; `meta.label` is the human line printed when one fails."""
    import great_expectations.expectations as gxe

    def label(text: str) -> dict[str, str]:
        return {"label": text}

    def between(column: str, text: str, **bounds: int) -> Any:
        return gxe.ExpectColumnValuesToBeBetween(column=column, meta=label(text), **bounds)

    share = f"accepted share >= {cfg.min_accepted_fraction:g}"
    return {
        "files": [
            gxe.ExpectColumnValuesToBeInSet(
                column="status",
                value_set=["accepted"],
                mostly=cfg.min_accepted_fraction,
                meta=label(share),
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="path", meta=label("path is never empty")),
            gxe.ExpectColumnValuesToBeUnique(column="path", meta=label("path is unique")),
        ],
        "manifest": [
            gxe.ExpectTableRowCountToBeBetween(
                min_value=cfg.min_images, meta=label(f"row count >= {cfg.min_images}")
            ),
            gxe.ExpectColumnValuesToBeUnique(column="sha256", meta=label("sha256 unique")),
            between("width", f"width >= {cfg.min_side}", min_value=cfg.min_side),
            between("height", f"height >= {cfg.min_side}", min_value=cfg.min_side),
            between("pixels", f"pixels <= {cfg.max_pixels}", max_value=cfg.max_pixels),
            between("channels", "channels in 1..4", min_value=1, max_value=4),
        ],
        "classes": [
            between(
                "n_images",
                f"images per class >= {cfg.min_images_per_class}",
                min_value=cfg.min_images_per_class,
            ),
        ],
    }


def _failure_line(table: str, result: dict[str, Any], frame: pl.DataFrame) -> str:
    """'manifest: row count >= 100 (got 42)' from one failed expectation's JSON result."""
    config = result["expectation_config"]
    text = (config.get("meta") or {}).get("label") or config["type"]
    res = result.get("result") or {}
    if result.get("exception_info", {}).get("raised_exception"):
        got = f"error: {result['exception_info'].get('exception_message')}"
    elif "observed_value" in res:
        got = f"got {res['observed_value']}"
    elif config["type"] == "expect_column_values_to_be_in_set" and res.get("element_count"):
        got = f"got {1 - res['unexpected_count'] / res['element_count']:.2f}"
    elif table == "classes":
        low = frame.filter(pl.col("n_images") < config["kwargs"]["min_value"])
        got = "too few: " + ", ".join(f"{c or '(root)'}={n}" for c, n in low.iter_rows())
    else:
        got = f"{res.get('unexpected_count', '?')} rows fail"
    return f"{table}: {text} ({got})"


def _add_docs_site(context: Any, docs_dir: Path) -> None:
    context.add_data_docs_site(
        site_name=SITE,
        site_config={
            "class_name": "SiteBuilder",
            # An ephemeral context has no root folder, so GX insists on an absolute path.
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )


def check_quality(files: pl.DataFrame, cfg: ValidateConfig, report_dir: Path) -> QualityResult:
    """Run the suite on the scan's rows; write gx_validation.json and Data Docs into report_dir."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = report_dir / "data_docs"
    shutil.rmtree(docs_dir, ignore_errors=True)  # old pages would list stale runs in the index

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    _add_docs_site(context, docs_dir)
    source = context.data_sources.add_pandas("ldm_scan")
    tables = _tables(files)
    passed, failed, results = True, [], {}
    for table, expectations in _expectations(cfg).items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        suite = context.suites.add(gx.ExpectationSuite(name=f"ldm_{table}"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"ldm_{table}", data=batch, suite=suite)
        )
        # One checkpoint per table: a run passes one dataframe to all its validation definitions.
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"ldm_{table}",
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="docs", site_names=[SITE])],
                result_format="SUMMARY",
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": tables[table].to_pandas()})
        for validation in outcome.run_results.values():
            as_json = validation.to_json_dict()
            results[table] = as_json
            passed = passed and bool(validation.success)
            failed += [
                _failure_line(table, r, tables[table])
                for r in as_json["results"]
                if not r["success"]
            ]

    result_json = report_dir / "gx_validation.json"
    result_json.write_text(json.dumps({"success": passed, "validations": results}, indent=2))
    return QualityResult(
        passed=passed, failed=failed, result_json=result_json, docs_index=docs_dir / "index.html"
    )
