"""What a stage cost: wall time, CPU and GPU hours, energy, peak memory, and money at the prices.

Every stage is measured the same way so `report` can add them up per variant; the keys are
those `ldm.records.StageCost` reads.
- CPU time counts this process and every process it started once they are reaped: the stage's
  workers, and under `torchrun` the launcher and its ranks (children of children are added to
  the parent's RUSAGE_CHILDREN when each level waits for its own).
- GPU-hours bill the GPUs the stage used (one per DDP rank), not every GPU the host has.
- Energy comes from NVML's per-GPU energy counters (`nvidia-ml-py`, the `gpu` extra), summed over
  the GPUs the stage used; where nothing measured it the key is absent, never 0.
- A resumed training stage adds the `Hours` its earlier attempts spent up to the resume point it
  continues from (kept there by the loop, `ldm.training.resume.hours_so_far`); `cost/attempts`
  says how many attempts the numbers cover. Work after that resume point was lost with its
  attempt and is not counted.
- `cost/usd` prices the hours with the rule `ldm.records.billed_usd`; the report prices them
  again at the prices it runs with.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the training loops import this module and stay free of pydantic
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


@dataclass(frozen=True)
class Hours:
    """What a stage spent over one or more attempts: what a resume point keeps (as JSON:
    checkpoints hold no pickles) so that the attempt resuming from it is billed for them too."""

    wall_seconds: float
    cpu_hours: float
    gpu_hours: float
    # None unless every attempt measured its GPUs: a part would pass for the whole
    energy_kwh: float | None
    attempts: int = 1

    def __add__(self, other: Hours) -> Hours:
        """Attempts that ran one after another."""
        energy = None
        if self.energy_kwh is not None and other.energy_kwh is not None:
            energy = self.energy_kwh + other.energy_kwh
        return Hours(
            wall_seconds=self.wall_seconds + other.wall_seconds,
            cpu_hours=self.cpu_hours + other.cpu_hours,
            gpu_hours=self.gpu_hours + other.gpu_hours,
            energy_kwh=energy,
            attempts=self.attempts + other.attempts,
        )

    def state(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_state(cls, text: str | None) -> Hours | None:
        """The hours a resume point kept; None where it kept none (written before they were)."""
        return None if text is None else cls(**json.loads(text))


@dataclass(frozen=True)
class _Reading:
    wall: float  # perf_counter seconds
    cpu: float  # CPU seconds of this process and its reaped children
    energy_mj: dict[str, float]  # NVML counters by GPU UUID

    @classmethod
    def now(cls) -> _Reading:
        return cls(time.perf_counter(), _cpu_seconds(), gpu_energy_mj())


def _hours_between(start: _Reading, end: _Reading, devices: DeviceUse) -> Hours:
    wall = end.wall - start.wall
    return Hours(
        wall_seconds=wall,
        cpu_hours=(end.cpu - start.cpu) / 3600,
        gpu_hours=devices.count * wall / 3600,
        energy_kwh=_energy_kwh(devices, start.energy_mj, end.energy_mj),
    )


def _energy_kwh(devices: DeviceUse, start: dict[str, float], end: dict[str, float]) -> float | None:
    """Energy of the GPUs used, or None unless NVML measured every one of them."""
    used = [normal_uuid(u) for u in devices.uuids]
    if not devices.count or len(used) != devices.count:
        return None
    if not all(u in start and u in end for u in used):
        return None
    return sum(end[u] - start[u] for u in used) / 3.6e9  # mJ -> kWh


class Clock:
    """This attempt's hours so far, from when it was made: a training loop reads it at each
    resume point. (Children's CPU time counts once they are reaped, as in `CostMeter`.)"""

    def __init__(self) -> None:
        self._start = _Reading.now()

    def hours(self, devices: DeviceUse) -> Hours:
        return _hours_between(self._start, _Reading.now(), devices)


@dataclass
class CostMeter:
    """`with CostMeter(cfg.cost) as meter: ...` then `meter.metrics(devices, carried)`."""

    prices: CostConfig
    _start: _Reading | None = field(default=None, init=False)
    _end: _Reading | None = field(default=None, init=False)

    def __enter__(self) -> CostMeter:
        # Every GPU's counter is read: which ones the stage uses is only known at its end.
        self._start = _Reading.now()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = _Reading.now()

    def metrics(self, devices: DeviceUse = CPU, carried: Hours | None = None) -> dict[str, Any]:
        """The `cost/*` metrics of the metered attempt, plus the hours of the attempts before it
        that `carried` holds (a resumed training stage's)."""
        from ldm.records import billed_usd  # pydantic: imported where a stage is recorded

        hours = _hours_between(self._start, self._end, devices)
        if carried is not None:
            hours = carried + hours
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        metrics: dict[str, Any] = {
            "cost/wall_seconds": hours.wall_seconds,
            "cost/cpu_hours": hours.cpu_hours,
            "cost/gpu_hours": hours.gpu_hours,
            "cost/usd": billed_usd(hours.cpu_hours, hours.gpu_hours, self.prices),
            "cost/device_kind": devices.kind,
            "cost/device_count": devices.count,
            "cost/attempts": hours.attempts,
            # ru_maxrss is in KiB on Linux; the largest of this process and any one worker.
            "cost/peak_rss_mb": max(own, children) / 1024,
        }
        if hours.energy_kwh is not None:
            metrics["cost/energy_kwh"] = hours.energy_kwh
        return metrics
