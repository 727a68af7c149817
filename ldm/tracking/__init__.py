"""Experiment tracking in MLflow: the only package of `ldm` that imports mlflow.

- `runs`: the trial's parent run, one nested run per stage, the store (`MlflowTracker`).
- `registry`: generator versions and their aliases; `promotion`: gated, recorded alias moves.
- `pyfunc` / `generator_model`: the generator as an MLflow pyfunc model; `servers`: the UI and
  the scoring server.
"""

from ldm.tracking.runs import (
    PARENT_RUN_ENV,
    attach,
    check_store,
    close_abandoned_runs,
    log_text,
    parent_tracker,
    provenance_tags,
    read_text,
    require_run,
    run_url,
    stage_run,
    tracking_uri,
    trial_run,
)

__all__ = [
    "PARENT_RUN_ENV",
    "attach",
    "check_store",
    "close_abandoned_runs",
    "log_text",
    "parent_tracker",
    "provenance_tags",
    "read_text",
    "require_run",
    "run_url",
    "stage_run",
    "tracking_uri",
    "trial_run",
]
