"""Where every stage reads and writes, derived once from the project root, and the names of the
cells (a variant trained with one seed) that per-variant stages and their folders carry.

`dvc.yaml` names the same paths; `tests/test_wiring.py` keeps the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding `dvc.yaml`; else `start`."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return start


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def discover(cls) -> Paths:
        return cls(find_project_root())

    def resolve(self, path: Path | str) -> Path:
        """A path from params.yaml: relative ones are relative to the project root."""
        path = Path(os.path.expanduser(path))
        return path if path.is_absolute() else self.root / path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def validated(self) -> Path:
        return self.data / "validated"

    @property
    def manifest(self) -> Path:
        return self.validated / "manifest.parquet"

    @property
    def rejected(self) -> Path:
        return self.validated / "rejected.csv"

    @property
    def prepared(self) -> Path:
        return self.data / "prepared"

    @property
    def metrics(self) -> Path:
        return self.data / "metrics"

    def stage_metrics(self, stage: str) -> Path:
        return self.metrics / f"{stage}.json"

    def convergence(self, cell: str) -> Path:
        """The DiT's gFD against step and compute, written by train_diffusion@<cell>."""
        return self.metrics / f"convergence@{cell}.json"

    def local(self, path: Path | str | None) -> Path | None:
        """An optional weights path from params.yaml, resolved; None stays None."""
        return None if path is None else self.resolve(path)

    @property
    def reference(self) -> Path:
        """The real images' features every FD is measured against (the reference stage)."""
        return self.data / "reference"

    @property
    def reports(self) -> Path:
        return self.data / "reports"

    def evaluation(self, cell: str) -> Path:
        """What evaluate@<cell> shows besides its numbers: sample grids, kept features."""
        return self.data / "evaluations" / cell

    @property
    def checkpoints(self) -> Path:
        return self.data / "checkpoints"

    # A cell is one variant trained with one seed, `plain-0` (`cell_name` below).
    def tokenizer(self, cell: str) -> Path:
        return self.checkpoints / f"tokenizer-{cell}"

    def latents(self, cell: str) -> Path:
        return self.data / "latents" / cell

    def diffusion(self, cell: str) -> Path:
        return self.checkpoints / f"diffusion-{cell}"

    def work(self, stage: str) -> Path:
        """A stage's resume points: outside its DVC outputs, which DVC clears before a rerun."""
        return self.data / ".work" / stage


def cell_name(variant: str, seed: int) -> str:
    """A cell's name, as DVC's matrix names its stages (`encode@plain-0`) and the folders."""
    return f"{variant}-{seed}"


def split_cell(cell: str) -> tuple[str, int]:
    """(variant, seed) of a cell's name; a variant's name may hold '-', a seed's never does."""
    variant, dash, seed = cell.rpartition("-")
    if not dash or not variant or not seed.isdigit():
        raise ValueError(f"{cell!r} names no cell: <variant>-<seed>, e.g. plain-0")
    return variant, int(seed)


def cell_options(cell: str) -> str:
    """The `ldm <stage>` options that pick the cell: `--variant plain --seed 0`."""
    variant, seed = split_cell(cell)
    return f"--variant {variant} --seed {seed}"
