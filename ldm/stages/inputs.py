"""A stage's inputs from earlier stages, with errors that name the command that makes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm.errors import DataError
from ldm.paths import Paths
from ldm.tokenizer.release import load_tokenizer

if TYPE_CHECKING:
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
