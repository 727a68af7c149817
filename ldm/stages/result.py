"""What every stage function returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ldm.cost import Hours


@dataclass(frozen=True)
class StageResult:
    metrics: dict[str, float]
    artifacts: list[Path] = field(default_factory=list)  # files or folders logged to MLflow
    problems: list[str] = field(default_factory=list)  # non-empty: the stage failed on its data
    # A stage whose record needs its own cost (evaluate's document, the report's trial total):
    # given the stage's own cost metrics, returns (the metrics file's content, the flat numbers
    # logged to MLflow).
    document: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, float]]] | None = None
    # A resumed training stage: the hours its earlier attempts spent up to the resume point it
    # continued from, which the runner adds to the hours it metered for this attempt.
    carried: Hours | None = None
