"""What every stage function returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageResult:
    metrics: dict[str, float]
    artifacts: list[Path] = field(default_factory=list)  # files or folders logged to MLflow
    problems: list[str] = field(default_factory=list)  # non-empty: the stage failed on its data
    # A stage whose metrics file is a typed document (evaluate): given the stage's own cost
    # metrics, returns (the file's content, the flat numbers logged to MLflow).
    document: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, float]]] | None = None
