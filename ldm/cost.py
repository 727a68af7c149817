"""What a stage cost: wall time, CPU and GPU hours, energy, peak memory, and money at the prices.

Every stage is measured the same way so `report` can add them up per variant; the keys are
those `ldm.records.StageCost` reads.
- CPU time counts this process and every process it started once they are reaped: the stage's
  workers, and under `torchrun` the launcher and its ranks (children of children are added to
  the parent's RUSAGE_CHILDREN when each level waits for its own).
- GPU-hours bill the GPUs the stage used (one per DDP rank), not every GPU the host has.
- Energy comes from NVML's per-GPU energy counters (`nvidia-ml-py`, the `gpu` extra), summed over
  the GPUs the stage used; where nothing measured it the key is absent, never 0.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm.config import CostConfig


@dataclass(frozen=True)
class DeviceUse:
    """The devices a stage computed on."""

    kind: str  # "cpu" or the GPU model name, as torch.cuda.get_device_name gives it
    count: int  # GPUs used; 0 on a CPU
    uuids: tuple[str, ...] = ()  # of the GPUs used, to find their energy counters in NVML


CPU = DeviceUse("cpu", 0)


def normal_uuid(uuid: object) -> str:
    """One spelling for a GPU id: NVML says 'GPU-3b1f…', torch prints the bare UUID."""
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    return text.lower().removeprefix("gpu-").replace("-", "")


def device_of_this_process(world_size: int = 1) -> DeviceUse:
    """The GPU this process computed on (each DDP rank uses one), or the CPU.

    torch is only asked if the stage already imported it and touched CUDA.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return CPU
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    # Only this GPU's id is known here: the others' energy is unknown unless each rank reports.
    return DeviceUse(props.name, world_size, (normal_uuid(props.uuid),))


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").is_file()


def gpu_energy_mj() -> dict[str, float]:
    """NVML's energy counter (mJ since the driver loaded) of every GPU, by UUID; {} if none.

    NVML reads the driver, not a CUDA context, so the launcher of a DDP job can read the
    counters of its ranks' GPUs without touching them.
    """
    if not _nvidia_driver_present():
        return {}
    try:
        import pynvml  # nvidia-ml-py, the `gpu` extra
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    counters = {}
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                uuid = normal_uuid(pynvml.nvmlDeviceGetUUID(handle))
                counters[uuid] = float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except pynvml.NVMLError:  # no counter on this GPU (before Volta, or a MIG slice)
                continue
    finally:
        pynvml.nvmlShutdown()
    return counters


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class CostMeter:
    """`with CostMeter(cfg.cost) as meter: ...` then `meter.metrics(devices)`."""

    prices: CostConfig
    _wall0: float = field(default=0.0, init=False)
    _cpu0: float = field(default=0.0, init=False)
    _wall: float = field(default=0.0, init=False)
    _cpu: float = field(default=0.0, init=False)
    _energy0: dict[str, float] = field(default_factory=dict, init=False)
    _energy1: dict[str, float] = field(default_factory=dict, init=False)

    def __enter__(self) -> CostMeter:
        # Every GPU's counter is read: which ones the stage uses is only known at its end.
        self._energy0 = gpu_energy_mj()
        self._wall0, self._cpu0 = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self._wall = time.perf_counter() - self._wall0
        self._cpu = _cpu_seconds() - self._cpu0
        self._energy1 = gpu_energy_mj()

    def energy_kwh(self, devices: DeviceUse) -> float | None:
        """Energy of the GPUs used, or None unless NVML measured every one of them."""
        used = [normal_uuid(u) for u in devices.uuids]
        if not devices.count or len(used) != devices.count:
            return None
        if not all(u in self._energy0 and u in self._energy1 for u in used):
            return None
        millijoules = sum(self._energy1[u] - self._energy0[u] for u in used)
        return millijoules / 3.6e9

    def metrics(self, devices: DeviceUse = CPU) -> dict[str, Any]:
        cpu_hours = self._cpu / 3600
        gpu_hours = devices.count * self._wall / 3600
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        metrics: dict[str, Any] = {
            "cost/wall_seconds": self._wall,
            "cost/cpu_hours": cpu_hours,
            "cost/gpu_hours": gpu_hours,
            "cost/usd": cpu_hours * self.prices.cpu_hour_usd + gpu_hours * self.prices.gpu_hour_usd,
            "cost/device_kind": devices.kind,
            "cost/device_count": devices.count,
            # ru_maxrss is in KiB on Linux; the largest of this process and any one worker.
            "cost/peak_rss_mb": max(own, children) / 1024,
        }
        energy = self.energy_kwh(devices)
        if energy is not None:
            metrics["cost/energy_kwh"] = energy
        return metrics
