"""Promotion gates: the quality and cost a generator must show before it may hold an alias.

The same check decides the report's recommendation (the `staging` gates) and `ldm promote`, so
a version the report recommends is one that promotion accepts.

A gate reads the interval, not the point, where the number has one: a maximum passes only when
the interval's upper end meets it, a minimum only when its lower end does. A point that passes by
less than its own noise would pass or fail by the luck of the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

from ldm.config import Gates
from ldm.records import EvaluateRecord

# gate -> the number of the evaluation record whose bootstrap interval it reads
GATED_NUMBERS = {
    "max_fd": "fd",
    "max_relative_fd": "relative_fd",
    "min_precision": "precision",
    "min_recall": "recall",
}


@dataclass(frozen=True)
class GateResult:
    name: str  # the setting, e.g. "max_relative_fd"
    threshold: float
    value: float | None  # None: the record does not hold this number
    passed: bool
    lo: float | None = None  # the value's interval, where it has one: the gate reads its end
    hi: float | None = None

    @property
    def is_maximum(self) -> bool:
        return self.name.startswith("max_")

    @property
    def bound(self) -> float | None:
        """The number the gate is judged on: the interval's far end, else the point."""
        end = self.hi if self.is_maximum else self.lo
        return self.value if end is None else end

    def describe(self) -> str:
        """`max_relative_fd: 0.69 [0.61..0.78] <= 0.8 passed`, for logs, tags and the report."""
        op = "<=" if self.is_maximum else ">="
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        if self.value is not None and self.lo is not None and self.hi is not None:
            shown += f" [{self.lo:.4g}..{self.hi:.4g}]"
        verdict = "passed" if self.passed else "FAILED"
        text = f"{self.name}: {shown} {op} {self.threshold:g} {verdict}"
        if not self.passed and self.value is not None and self.bound != self.value:
            side = "upper" if self.is_maximum else "lower"
            text += f" (judged on the {side} bound {self.bound:.4g})"
        return text


def gate_values(record: EvaluateRecord) -> dict[str, float]:
    """The point each gate reads from an evaluation."""
    return {
        "max_fd": record.generation.fd,
        "max_relative_fd": record.reference.relative(record.generation.fd),
        "min_precision": record.generation.precision,
        "min_recall": record.generation.recall,
        "max_cost_usd": record.cost.total.usd,
    }


def gate_intervals(record: EvaluateRecord) -> dict[str, list[float]]:
    """[lo, hi] of each gated number that has a bootstrap interval (none before intervals)."""
    found = {gate: record.interval(number) for gate, number in GATED_NUMBERS.items()}
    return {gate: [i.lo, i.hi] for gate, i in found.items() if i is not None}


def check_gates(
    gates: Gates, values: dict[str, float], intervals: dict[str, list[float]]
) -> list[GateResult]:
    """Each gate that is switched on (not null), checked against `values`, on the far end of
    its interval in `intervals` where there is one."""
    results = []
    for name, threshold in gates.model_dump().items():
        if threshold is None:
            continue
        value = values.get(name)
        lo, hi = intervals.get(name, (None, None))
        result = GateResult(name, float(threshold), value, False, lo, hi)
        bound = result.bound
        if bound is not None:
            passed = bound <= threshold if result.is_maximum else bound >= threshold
            result = GateResult(name, float(threshold), value, passed, lo, hi)
        results.append(result)
    return results
