"""What a stage cost: wall time, CPU and GPU hours, peak memory, and money at the params' prices.

Every stage is measured the same way so `report` can add them up per variant. CPU time includes
the worker processes a stage started (they are reaped before the meter stops).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

from ldm.config import CostConfig


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _gpu_count_in_use() -> int:
    """GPUs this process initialised; torch is only asked if the stage already imported it."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return torch.cuda.device_count()


@dataclass
class CostMeter:
    """`with CostMeter(cfg.cost) as meter: ...` then `meter.metrics()`."""

    prices: CostConfig
    _wall0: float = field(default=0.0, init=False)
    _cpu0: float = field(default=0.0, init=False)
    _wall: float = field(default=0.0, init=False)
    _cpu: float = field(default=0.0, init=False)
    _gpus: int = field(default=0, init=False)

    def __enter__(self) -> CostMeter:
        self._wall0, self._cpu0 = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self._wall = time.perf_counter() - self._wall0
        self._cpu = _cpu_seconds() - self._cpu0
        self._gpus = _gpu_count_in_use()

    def metrics(self) -> dict[str, float]:
        cpu_hours = self._cpu / 3600
        gpu_hours = self._gpus * self._wall / 3600
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return {
            "cost/wall_seconds": self._wall,
            "cost/cpu_hours": cpu_hours,
            "cost/gpu_count": float(self._gpus),
            "cost/gpu_hours": gpu_hours,
            "cost/usd": cpu_hours * self.prices.cpu_hour_usd + gpu_hours * self.prices.gpu_hour_usd,
            # ru_maxrss is in KiB on Linux; the largest of this process and any one worker.
            "cost/peak_rss_mb": max(own, children) / 1024,
        }
