"""The trial's stages, in DAG order: the one list `dvc.yaml`, the CLI and the flow agree with.

Stage name = `ldm` command = DVC stage = Prefect task = the file in `ldm/stages/` that computes
it (tests/test_wiring.py checks all of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ldm.config import Config
    from ldm.stages.result import StageResult


@dataclass(frozen=True)
class Stage:
    # The module and function that compute the stage, imported when it runs: a stage process
    # then loads only what its own stage needs (validate never imports torch).
    module: str
    name: str
    # One run per cell, a variant trained with one seed of trial.seeds: `name@<variant>-<seed>`.
    per_variant: bool = False
    # data/metrics/<name>.json for `dvc metrics show`; report reads that folder whole, so its
    # numbers stay in its own output (data/reports/summary.json) and MLflow.
    writes_metrics_file: bool = True

    @property
    def function(self) -> Callable[..., StageResult]:  # (cfg, paths, tracker[, cell])
        import importlib

        return getattr(importlib.import_module(self.module), self.name)


# The pipeline's stages in DAG order. dvc.yaml and the Prefect flow use the same names
# (tests/test_wiring.py checks it); per-variant stages are DVC `matrix` stages, one per cell.
STAGES: dict[str, Stage] = {
    "validate": Stage("ldm.stages.validate", "validate"),
    "prepare": Stage("ldm.stages.prepare", "prepare"),
    "reference": Stage("ldm.stages.reference", "reference"),
    "train_tokenizer": Stage("ldm.stages.train_tokenizer", "train_tokenizer", per_variant=True),
    "encode": Stage("ldm.stages.encode", "encode", per_variant=True),
    "train_diffusion": Stage("ldm.stages.train_diffusion", "train_diffusion", per_variant=True),
    "evaluate": Stage("ldm.stages.evaluate", "evaluate", per_variant=True),
    "report": Stage("ldm.stages.report", "report", writes_metrics_file=False),
}


def stage_names(cfg: Config) -> list[str]:
    """Every DVC stage of the trial in DAG order, per-variant ones expanded into one per cell
    in DVC's matrix order (`encode@plain-0`, `encode@plain-1`, `encode@aligned-0`, ...)."""
    names = []
    for name, stage in STAGES.items():
        names += [f"{name}@{cell}" for cell in cfg.cells()] if stage.per_variant else [name]
    return names


def declared_params(root: Path, stage: str) -> list[str] | None:
    """The params keys `stage` reads, as the project's dvc.yaml lists them (the one list:
    tests/test_stage_deps.py watches each stage read them); `variants.${item.variant}` is a
    per-variant stage's own entry. None where the project has no dvc.yaml or the file has no
    such stage."""
    import yaml

    file = root / "dvc.yaml"
    if not file.is_file():
        return None
    spec = (yaml.safe_load(file.read_text()) or {}).get("stages", {}).get(stage)
    if spec is None:
        return None
    spec = spec.get("do", spec)  # a `foreach` stage's body; a `matrix` stage's is its own
    return [entry for entry in spec.get("params", []) if isinstance(entry, str)]
