"""What every stage function returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StageResult:
    metrics: dict[str, float]
    artifacts: list[Path] = field(default_factory=list)  # files or folders logged to MLflow
    problems: list[str] = field(default_factory=list)  # non-empty: the stage failed on its data
