"""A stage's inputs from earlier stages, with errors that name the command that makes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm.errors import DataError
from ldm.paths import Paths, cell_options
from ldm.tokenizer.release import load_tokenizer

if TYPE_CHECKING:
    from ldm.tokenizer.model import Tokenizer


def released_tokenizer(paths: Paths, cell: str) -> Tokenizer:
    """The cell's tokenizer (`plain-0`), or a DataError naming the stage that makes it."""
    try:
        return load_tokenizer(paths.tokenizer(cell))
    except FileNotFoundError:
        raise DataError(
            f"{paths.tokenizer(cell)} holds no released tokenizer: run "
            f"`ldm train-tokenizer {cell_options(cell)}` first"
        ) from None
