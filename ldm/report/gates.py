"""Promotion gates: the quality and cost a generator must show before it may hold an alias.

The same check decides the report's recommendation (the `staging` gates) and `ldm promote`, so
a version the report recommends is one that promotion accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ldm.config import Gates
from ldm.records import EvaluateRecord


@dataclass(frozen=True)
class GateResult:
    name: str  # the setting, e.g. "max_relative_fd"
    threshold: float
    value: float | None  # None: the record does not hold this number
    passed: bool

    def describe(self) -> str:
        """`max_relative_fd: 0.62 <= 0.8 passed`, for logs, tags and the report."""
        op = "<=" if self.name.startswith("max_") else ">="
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        verdict = "passed" if self.passed else "FAILED"
        return f"{self.name}: {shown} {op} {self.threshold:g} {verdict}"


def gate_values(record: EvaluateRecord) -> dict[str, float]:
    """The number each gate reads from an evaluation."""
    return {
        "max_fd": record.generation.fd,
        "max_relative_fd": record.reference.relative(record.generation.fd),
        "min_precision": record.generation.precision,
        "min_recall": record.generation.recall,
        "max_cost_usd": record.cost.total.usd,
    }


def check_gates(gates: Gates, values: dict[str, float]) -> list[GateResult]:
    """Each gate that is switched on (not null), checked against `values`."""
    results = []
    for name, threshold in gates.model_dump().items():
        if threshold is None:
            continue
        value = values.get(name)
        if value is None:
            passed = False
        elif name.startswith("max_"):
            passed = value <= threshold
        else:
            passed = value >= threshold
        results.append(GateResult(name, float(threshold), value, passed))
    return results
