"""A stage's inputs from earlier stages, with errors that name the command that makes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm.errors import DataError
from ldm.paths import Paths
from ldm.tokenizer.release import load_tokenizer

if TYPE_CHECKING:
    import numpy as np

    from ldm.tokenizer.model import Tokenizer


def released_tokenizer(paths: Paths, variant: str) -> Tokenizer:
    """The variant's tokenizer, or a DataError naming the stage that makes it."""
    try:
        return load_tokenizer(paths.tokenizer(variant))
    except FileNotFoundError:
        raise DataError(
            f"{paths.tokenizer(variant)} holds no released tokenizer: run "
            f"`ldm train-tokenizer --variant {variant}` first"
        ) from None


def reference_features(paths: Paths, split: str, network: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the real `split` ("val" or "train") the reference stage measured."""
    import numpy as np

    source = paths.reference / f"{split}.npz"
    if not source.is_file():
        raise DataError(f"{source} not found: run `ldm reference` first")
    with np.load(source, allow_pickle=False) as stored:
        if str(stored["network"]) != network:
            raise DataError(
                f"{source} holds {stored['network']} features but evaluate.features is "
                f"{network}: run `ldm reference` again"
            )
        return stored["features"], stored["labels"]


def evaluation_features(paths: Paths, variant: str, network: str) -> dict[str, np.ndarray]:
    """The features `evaluate@<variant>` kept: `generated` (row j from the j-th fixed noise and
    label), `labels` (empty without classes) and `untrained` (decoded N(0, I) latents)."""
    import numpy as np

    source = paths.evaluation(variant) / "features.npz"
    if not source.is_file():
        raise DataError(f"{source} not found: run `ldm evaluate --variant {variant}` first")
    with np.load(source, allow_pickle=False) as stored:
        if str(stored["network"]) != network:
            raise DataError(
                f"{source} holds {stored['network']} features, not {network}: run "
                f"`ldm evaluate --variant {variant}` again"
            )
        return {name: stored[name] for name in ("generated", "labels", "untrained")}
