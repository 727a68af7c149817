"""What stages and training loops report to: a protocol with no MLflow behind it.

The loops and stages log through a `Tracker` and never branch on whether tracking is on;
`ldm.tracking` implements it on an MLflow run, `NullTracker` logs nothing (library calls, tests,
the ranks of a DDP job other than rank 0). It lives in the base so that the model code below
`ldm.tracking` can name it without importing MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np


class Tracker(Protocol):
    """What stages and training loops may log; they never branch on whether tracking is on."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...


class NullTracker:
    """Logs nothing: for library calls and tests that do not need a store."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        pass
