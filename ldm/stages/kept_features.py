"""The feature rows earlier stages kept: the real splits (`reference`) and each evaluation's
generated and untrained rows (`evaluate`). Apart from ldm/stages/inputs.py, which loads models:
the report reads these without depending on any model's code."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ldm.errors import DataError
from ldm.paths import Paths, cell_options

if TYPE_CHECKING:
    import numpy as np


def kept(source: Path, network: str, command: str, names: tuple[str, ...]) -> list[np.ndarray]:
    """The arrays `names` of a kept .npz, checked to hold `network`'s features; an error that
    names `command`, which writes it, when it is missing or from another network."""
    import numpy as np

    if not source.is_file():
        raise DataError(f"{source} not found: run `{command}` first")
    with np.load(source, allow_pickle=False) as stored:
        if str(stored["network"]) != network:
            raise DataError(
                f"{source} holds {stored['network']} features but evaluate.features is "
                f"{network}: run `{command}` again"
            )
        return [stored[name] for name in names]


def reference_features(paths: Paths, split: str, network: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the real `split` ("val" or "train") the reference stage measured."""
    features, labels = kept(
        paths.reference / f"{split}.npz", network, "ldm reference", ("features", "labels")
    )
    return features, labels


def evaluation_features(paths: Paths, cell: str, network: str) -> dict[str, np.ndarray | None]:
    """The features `evaluate@<cell>` kept: `generated` (row j from the j-th fixed noise and
    label), `labels` (empty without classes), `untrained` (decoded N(0, I) latents) and
    `reconstructed` (row i: the tokenizer's reconstruction of val image i, paired with row i of
    the reference's val features; None in evaluations from before it)."""
    import numpy as np

    names = ("generated", "labels", "untrained")
    source = paths.evaluation(cell) / "features.npz"
    found = kept(source, network, f"ldm evaluate {cell_options(cell)}", names)
    with np.load(source, allow_pickle=False) as stored:
        reconstructed = stored.get("reconstructed")  # a lazy Mapping: read here, while open
    return dict(zip(names, found, strict=True)) | {"reconstructed": reconstructed}
