"""What a stage is billed: the devices it used, their energy when NVML measured it, the CPU time."""

from __future__ import annotations

import sys
import time
import types

import pytest

from ldm import cost
from ldm.config import CostConfig
from ldm.errors import LdmError
from ldm.records import StageCost
from ldm.stages import launch

PRICES = CostConfig(gpu_hour_usd=2.0, cpu_hour_usd=0.1, bill_cpu_on_gpu=False)
UUIDS = ["GPU-1111aaaa-0000-0000-0000-000000000000", "GPU-2222bbbb-0000-0000-0000-000000000000"]
UUIDS += ["GPU-3333cccc-0000-0000-0000-000000000000", "GPU-4444dddd-0000-0000-0000-000000000000"]


def fake_nvml(watts: list[float]) -> types.ModuleType:
    """NVML with one GPU per entry of `watts`; each read of a counter advances it by 1 s."""
    module = types.ModuleType("pynvml")
    counters = [0.0] * len(watts)

    class NVMLError(Exception):
        pass

    def read(index: int) -> float:
        counters[index] += watts[index] * 1000  # mJ per second of use
        return counters[index]

    module.NVMLError = NVMLError
    module.nvmlInit = module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: len(watts)
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetUUID = lambda index: UUIDS[index]
    module.nvmlDeviceGetTotalEnergyConsumption = read
    return module


def metered(devices: cost.DeviceUse) -> dict:
    with cost.CostMeter(PRICES) as meter:
        time.sleep(0.05)
    return meter.metrics(devices)


def test_on_a_cpu_no_gpu_is_billed_and_energy_is_absent() -> None:
    metrics = metered(cost.device_of_this_process())
    assert metrics["cost/device_kind"] == "cpu" and metrics["cost/device_count"] == 0
    assert metrics["cost/gpu_hours"] == 0 and "cost/energy_kwh" not in metrics
    assert metrics["cost/wall_seconds"] >= 0.05
    assert metrics["cost/usd"] == pytest.approx(metrics["cost/cpu_hours"] * 0.1)
    record = StageCost.from_metrics(metrics | {"loss": 1.0})
    assert record.energy_kwh is None and record.device_kind == "cpu"


def test_energy_sums_the_gpus_the_stage_used_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "_nvidia_driver_present", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([100, 200, 400, 800]))
    # The stage ran on GPUs 1 and 2 of 4 (torch spells UUIDs without the "GPU-" prefix).
    used = cost.DeviceUse("NVIDIA H100 80GB HBM3", 2, (UUIDS[1][4:].upper(), UUIDS[2]))
    metrics = metered(used)
    # Each counter was read twice, one simulated second apart: 200 J + 400 J.
    assert metrics["cost/energy_kwh"] == pytest.approx(600 / 3.6e6)
    wall = metrics["cost/wall_seconds"]
    assert metrics["cost/gpu_hours"] == pytest.approx(2 * wall / 3600)
    # A GPU instance's price includes its CPUs: GPU-hours alone (PRICES.bill_cpu_on_gpu false).
    assert metrics["cost/usd"] == pytest.approx(metrics["cost/gpu_hours"] * 2.0)
    record = StageCost.from_metrics(metrics)
    assert record.device_count == 2 and record.device_kind == "NVIDIA H100 80GB HBM3"
    # A GPU NVML does not know (or one id missing) leaves the energy unmeasured, not 0.
    assert "cost/energy_kwh" not in metered(cost.DeviceUse("x", 2, (UUIDS[1], "GPU-other")))
    assert "cost/energy_kwh" not in metered(cost.DeviceUse("x", 2, (UUIDS[1],)))


def rank_report(rank: int, kind: str, uuid: str | None, **extra: object) -> dict:
    report = {"rank": rank, "outcome": "done", "metrics": {}, "artifacts": []}
    return report | {"device_kind": kind, "device_uuid": uuid} | extra


def test_a_two_rank_job_bills_both_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = "NVIDIA H200"
    reports = [
        rank_report(0, kind, UUIDS[0], metrics={"train/final_loss": 0.5}, artifacts=["a.json"]),
        rank_report(1, kind, UUIDS[1]),
    ]
    result, devices = launch.outcome(reports, nprocs=2, exit_code=0)
    assert result.metrics == {"train/final_loss": 0.5} and [str(a) for a in result.artifacts]
    assert devices == cost.DeviceUse(kind, 2, (UUIDS[0], UUIDS[1]))
    monkeypatch.setattr(cost, "_nvidia_driver_present", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([100, 200, 400, 800]))
    metrics = metered(devices)
    assert metrics["cost/device_count"] == 2
    assert metrics["cost/gpu_hours"] == pytest.approx(2 * metrics["cost/wall_seconds"] / 3600)
    assert metrics["cost/energy_kwh"] == pytest.approx(300 / 3.6e6)
    _, on_cpu = launch.outcome([rank_report(r, "cpu", None) for r in (0, 1)], 2, 0)
    assert on_cpu == cost.CPU


def test_rank_failures_keep_their_meaning() -> None:
    user = rank_report(1, "cpu", None, outcome="user_error", message="batch is not a multiple")
    with pytest.raises(LdmError, match="not a multiple"):  # exit code 1, as the rank's
        launch.outcome([rank_report(0, "cpu", None), user], 2, 1)
    crashed = rank_report(1, "cpu", None, outcome="unexpected")
    with pytest.raises(launch.RanksFailed, match=r"\[1\]"):  # exit code 3, retried by `ldm run`
        launch.outcome([rank_report(0, "cpu", None), crashed], 2, 1)
    with pytest.raises(launch.RanksFailed, match=r"\[1\]"):  # killed before it could report
        launch.outcome([rank_report(0, "cpu", None)], 2, -9)
