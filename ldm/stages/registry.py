"""The trial's stages, in DAG order: the one list `dvc.yaml`, the CLI and the flow agree with.

Stage name = `ldm` command = DVC stage = Prefect task = the file in `ldm/stages/` that computes
it (tests/test_wiring.py checks all of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    # The params it reads that change what it writes: its DVC params (a test keeps them equal)
    # and, by section, the params logged with its run. `variants.${key}` is the variant's entry.
    params: tuple[str, ...]
    per_variant: bool = False  # one run per tokenizer variant in `variants`: name@variant
    # data/metrics/<name>.json for `dvc metrics show`; report reads that folder whole, so its
    # numbers stay in its own output (data/reports/summary.json) and MLflow.
    writes_metrics_file: bool = True

    @property
    def function(self) -> Callable[..., StageResult]:  # (cfg, paths, tracker[, variant])
        import importlib

        return getattr(importlib.import_module(self.module), self.name)

    @property
    def sections(self) -> list[str]:
        return [s for s in dict.fromkeys(k.split(".")[0] for k in self.params) if s != "variants"]


# The pipeline's stages in DAG order. dvc.yaml and the Prefect flow use the same names
# (tests/test_wiring.py checks it); per-variant stages are DVC `foreach` stages.
STAGES: dict[str, Stage] = {
    "validate": Stage("ldm.stages.validate", "validate", ("data.raw_dir", "validate")),
    "prepare": Stage(
        "ldm.stages.prepare",
        "prepare",
        ("data.raw_dir", "data.resolution", "data.val_fraction", "prepare"),
    ),
    "reference": Stage(
        "ldm.stages.reference",
        "reference",
        (
            "evaluate.features",
            "evaluate.features_weights",
            "evaluate.features_sha256",
            "evaluate.num_samples",
            "evaluate.seed",
            "evaluate.batch_size",
            "diffusion.device",
        ),
    ),
    "train_tokenizer": Stage(
        "ldm.stages.train_tokenizer",
        "train_tokenizer",
        (
            "variants.${key}",
            "data.resolution",
            "tokenizer",
            "align",
            "evaluate.features",
            "evaluate.features_weights",
            "evaluate.features_sha256",
            "evaluate.batch_size",
        ),
        per_variant=True,
    ),
    "encode": Stage(
        "ldm.stages.encode",
        "encode",
        ("tokenizer.device", "evaluate.batch_size", "prepare.shard_size"),
        per_variant=True,
    ),
    "train_diffusion": Stage(
        "ldm.stages.train_diffusion",
        "train_diffusion",
        (
            "diffusion",
            "sample",
            "evaluate.features",  # the convergence curve's FD
            "evaluate.features_weights",
            "evaluate.features_sha256",
            "evaluate.batch_size",
        ),
        per_variant=True,
    ),
    "evaluate": Stage(
        "ldm.stages.evaluate",
        "evaluate",
        ("evaluate", "sample", "diffusion.device"),
        per_variant=True,
    ),
    "report": Stage(
        "ldm.stages.report",
        "report",
        ("report", "promotion", "registry", "sample", "tracking.experiment"),
        writes_metrics_file=False,
    ),
}


def stage_names(cfg: Config) -> list[str]:
    """Every DVC stage of the trial in DAG order, per-variant ones expanded (`encode@plain`)."""
    names = []
    for name, stage in STAGES.items():
        names += [f"{name}@{v}" for v in cfg.variants] if stage.per_variant else [name]
    return names
