"""The learning-rate schedule both training loops follow: linear warm-up, then constant or
cosine decay to 10 % of the configured rate, kept with the run so that extending it keeps its past.

Raising `tokenizer.steps` or `diffusion.steps` after a run has started extends that run: it
resumes at its newest resume point, and the steps it had already taken keep the learning rates
they were trained with. From the resumed step on, a new cosine starts at the rate the run had
reached there and decays to the same floor (10 % of the configured `lr`) at the new number of
steps; a run that had already decayed to its floor stays at the floor. Warm-up counts from step 0
whatever the length, and a cosine starts once warm-up is over. The alignment phases of an aligned
tokenizer keep the step boundaries of the run's first length: the added steps train in the last
phase. With `lr_schedule: constant` nothing is stretched: after warm-up the rate is `lr`. Each
extension adds one segment to the schedule saved in the resume point; a resume point saved
before schedules were saved resumes as one segment over the steps recorded in it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ldm.nested import flatten

FLOOR = 0.1  # a cosine decays to this fraction of the configured rate


@dataclass(frozen=True)
class Segment:
    """One stretch of cosine, from its first step to the rest of the run (or the next one)."""

    first: int  # the first step whose rate it sets
    horizon: int  # the step at which it reaches the floor
    start: float  # its rate as its cosine begins, as a fraction of the configured rate


@dataclass
class Schedule:
    """The rate of every step of one run: warm-up, then its segments in step order."""

    lr: float
    kind: str  # "constant" or "cosine"
    warmup: int
    segments: list[Segment]

    @classmethod
    def new(cls, lr: float, kind: str, warmup: int, steps: int) -> Schedule:
        """A run started for `steps` steps: one cosine from the full rate to the floor."""
        return cls(lr, kind, warmup, [Segment(0, steps, 1.0)])

    @property
    def first_horizon(self) -> int:
        """The length the run was started with: what shares of the run are shares of."""
        return self.segments[0].horizon

    def rate(self, step: int) -> float:
        """The learning rate of step `step` (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.kind == "constant":
            return self.lr * warm
        return self.lr * warm * self._shape(step)

    def _shape(self, step: int) -> float:
        """The cosine's fraction of the configured rate at `step`, warm-up aside."""
        segment = next(s for s in reversed(self.segments) if s.first <= step)
        begin = max(segment.first, self.warmup)
        progress = max(0.0, step - begin) / max(1, segment.horizon - begin)
        # In this order a first segment (start 1.0) computes lr · warm · (0.1 + 0.9 · 0.5 ·
        # (1 + cos)) bit for bit, as runs did before segments: the same seeds, the same models.
        return FLOOR + (segment.start - FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def extend(self, step: int, steps: int) -> None:
        """Resumed at `step` and asked for `steps`: from `step` on, a cosine from the rate
        reached there to the floor at `steps`. Nothing changes when `steps` is the horizon
        already in force; the rates of the steps before `step` never change."""
        if steps == self.segments[-1].horizon:
            return
        start = self._shape(step)
        self.segments = [s for s in self.segments if s.first < step] + [Segment(step, steps, start)]

    def state(self) -> str:
        """The segments as JSON, for a resume point (checkpoints hold plain values only)."""
        return json.dumps([[s.first, s.horizon, s.start] for s in self.segments])


def resumed_schedule(
    lr: float, kind: str, warmup: int, steps: int, state: dict[str, Any] | None, steps_key: str
) -> Schedule:
    """The schedule of a run asked for `steps` steps: a new one, or the one saved in the
    resume state it continues (`None`: none), extended when `steps` changed.

    A state saved before schedules were saved is read as one segment over the steps its
    run was asked for (`steps_key` in its saved settings, e.g. "tokenizer.steps"), else over
    `steps`: an approximation of its past, never a reason to throw its training away.
    """
    if state is None:
        return Schedule.new(lr, kind, warmup, steps)
    if "schedule" in state:
        segments = [Segment(int(a), int(b), float(c)) for a, b, c in json.loads(state["schedule"])]
    else:
        recorded = flatten(json.loads(state.get("settings", "{}"))).get(steps_key)
        segments = [Segment(0, int(recorded) if recorded is not None else steps, 1.0)]
    schedule = Schedule(lr, kind, warmup, segments)
    schedule.extend(int(state["step"]), steps)
    return schedule
