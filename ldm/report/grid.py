"""The dilemma's answers as data (`summary.json`): where each variant sits in the grid of
latent widths and regularisers, and what the trial could tell about them (ldm/report/dilemma.py
decides them). Plain pydantic, as the rest of the summary, for the CLI to read quickly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GridPoint(Model):
    """One variant's place in the grid, and the two numbers the dilemma plots."""

    variant: str
    downsampling: int  # f
    width: int  # d, the latent channels
    regulariser: str  # `plain`, `VF`, `equivariance`, `latent denoising`, or a `+` of them
    rfd: float | None  # reconstructions of the val images against them (None: not kept)
    rfd_lo: float | None
    rfd_hi: float | None
    gfd: float
    gfd_lo: float | None
    gfd_hi: float | None


class Gap(Model):
    """`wide` minus `narrow` of one number (lower is better), with its interval."""

    number: str  # rFD or gFD
    narrow: str
    wide: str
    difference: float
    lo: float
    hi: float
    detectable: bool  # the interval excludes 0 and the gap reaches report.min_effect


class WidthAnswer(Model):
    regulariser: str
    narrow: str  # variant names
    wide: str
    narrow_width: int
    wide_width: int
    reconstruction: Gap | None  # None: the evaluations kept no reconstruction rows
    generation: Gap
    pays_off: bool | None  # generation detectably better (True), worse (False), or undecided
    text: str
    plan: str | None  # when undecided: what would decide


class WidthTopSet(Model):
    width: int
    top_set: list[str]  # best first
    text: str
    plan: str | None


class Dilemma(Model):
    grid: list[GridPoint]
    level: float  # the intervals' coverage
    wider: list[WidthAnswer]
    wider_text: str
    per_width: list[WidthTopSet]
    pick_text: str
    pick_plan: str | None  # when the top set holds several: what would tell its first two apart
