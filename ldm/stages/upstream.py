"""What the stages before an evaluation recorded, read back for its record: the tokenizer's
reconstruction numbers and each stage's cost, with errors that name the command that makes them.
"""

from __future__ import annotations

import json

from ldm.errors import DataError
from ldm.paths import Paths, cell_options
from ldm.records import StageCost, TokenizerQuality


def tokenizer_quality(paths: Paths, cell: str) -> TokenizerQuality:
    source = paths.stage_metrics(f"train_tokenizer@{cell}")
    if not source.is_file():
        raise DataError(f"{source} not found: run `ldm train-tokenizer {cell_options(cell)}`")
    return TokenizerQuality.from_metrics(json.loads(source.read_text()))


def cell_costs(paths: Paths, cell: str) -> dict[str, StageCost]:
    """What each stage this cell's generator depends on cost, shared stages included
    (the reference features are measured once, and every cell's evaluation reads them)."""
    stages = ["validate", "prepare", "reference"]
    stages += [f"{s}@{cell}" for s in ("train_tokenizer", "encode", "train_diffusion")]
    costs = {}
    for stage in stages:
        source = paths.stage_metrics(stage)
        if not source.is_file():
            family, _, of = stage.partition("@")
            command = " ".join([family.replace("_", "-"), *([cell_options(of)] if of else [])])
            raise DataError(f"{source} not found: run `ldm {command}` first")
        costs[stage] = StageCost.from_metrics(json.loads(source.read_text()))
    return costs
