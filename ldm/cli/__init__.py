"""The `ldm` command: one sub-command per stage, `ldm run` for the whole trial, and helpers."""

from ldm.cli import models, pool, stages, tools, trial  # noqa: F401  (each module registers its commands)
from ldm.cli.common import app

__all__ = ["app"]
