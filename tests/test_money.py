"""Money that adds up: stages record hours, the report prices them at its prices, a resumed stage
carries the hours of its earlier attempts, and the trial's total holds every stage once, the
report's own run included."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mlflow import MlflowClient

from ldm import cost
from ldm.config import CostConfig, load
from ldm.cost import Clock, CostMeter, DeviceUse, Hours
from ldm.paths import Paths
from ldm.records import EvaluateRecord, StageCost, VariantCost, billed_usd, total_cost, trial_cost
from ldm.stages import launch, run, stage_names
from ldm.stages.result import StageResult
from ldm.training import checkpoint
from ldm.training.distributed import cleanup, init_distributed
from ldm.training.resume import hours_so_far
from tests.conftest import killed_after, set_params

PRICES = CostConfig(gpu_hour_usd=2.0, cpu_hour_usd=0.1, bill_cpu_on_gpu=False)
BOTH = CostConfig(gpu_hour_usd=2.0, cpu_hour_usd=0.1, bill_cpu_on_gpu=True)
H100 = DeviceUse("NVIDIA H100", 2, ())


def stage_cost(cpu_hours: float, gpu_hours: float, devices: DeviceUse, usd: float) -> StageCost:
    return StageCost(
        wall_seconds=3600.0,
        cpu_hours=cpu_hours,
        gpu_hours=gpu_hours,
        usd=usd,
        device_kind=devices.kind,
        device_count=devices.count,
    )


def burn_cpu(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_gpu_stage_bills_gpu_hours_only_unless_bill_cpu_on_gpu() -> None:
    assert billed_usd(8.0, 2.0, PRICES) == pytest.approx(2 * 2.0)
    assert billed_usd(8.0, 2.0, BOTH) == pytest.approx(2 * 2.0 + 8 * 0.1)
    assert billed_usd(8.0, 0.0, PRICES) == billed_usd(8.0, 0.0, BOTH) == 0.8
    # a stage resumed on a CPU after GPU attempts: the carried GPU-hours are still billed
    carried = StageCost(
        wall_seconds=7200.0,
        cpu_hours=8.0,
        gpu_hours=2.0,
        usd=0.0,
        device_kind="cpu",
        device_count=0,
    )
    assert carried.priced(PRICES).usd == pytest.approx(2 * 2.0)
    # The meter bills with the same rule as the report.
    for prices in (PRICES, BOTH):
        with CostMeter(prices) as meter:
            burn_cpu(0.05)
        metrics = meter.metrics(H100, None)
        cpu, gpu = metrics["cost/cpu_hours"], metrics["cost/gpu_hours"]
        assert cpu > 0 and gpu == pytest.approx(2 * metrics["cost/wall_seconds"] / 3600)
        assert metrics["cost/usd"] == pytest.approx(billed_usd(cpu, gpu, prices))
        assert StageCost.from_metrics(metrics).priced(prices).usd == pytest.approx(
            metrics["cost/usd"]
        )
        billed_cpu = metrics["cost/usd"] - gpu * 2.0
        assert billed_cpu == pytest.approx(cpu * 0.1 if prices.bill_cpu_on_gpu else 0.0)


def test_report_time_prices_reprice_stored_costs() -> None:
    """Stored at one price, read at another: each stage's usd follows the new prices, the total
    is the sum of its stages, and what was stored is not changed."""
    stages = {
        "prepare": stage_cost(0.5, 0.0, cost.CPU, usd=99.0),  # priced once at other prices
        "train_diffusion@plain-0": stage_cost(4.0, 2.0, H100, usd=99.0),
    }
    stored = VariantCost(total=total_cost(list(stages.values())), stages=stages)
    for prices, gpu_stage in ((PRICES, 2 * 2.0), (BOTH, 2 * 2.0 + 4 * 0.1)):
        priced = stored.priced(prices)
        assert priced.stages["prepare"].usd == pytest.approx(0.5 * 0.1)
        assert priced.stages["train_diffusion@plain-0"].usd == pytest.approx(gpu_stage)
        assert priced.total.usd == pytest.approx(0.5 * 0.1 + gpu_stage)
        assert priced.total.cpu_hours == stored.total.cpu_hours  # hours never change
    dearer = CostConfig(gpu_hour_usd=4.0, cpu_hour_usd=0.1, bill_cpu_on_gpu=False)
    assert stored.priced(dearer).total.usd == pytest.approx(0.05 + 8.0)
    assert stored.total.usd == 198.0


def test_a_trial_reprices_without_retraining(tiny_trial) -> None:  # noqa: ANN001
    """The tiny trial's records, as the report reads them, at two CPU prices."""
    paths = Paths(tiny_trial.root)
    records = [
        EvaluateRecord.model_validate_json(paths.stage_metrics(f"evaluate@{c}").read_text())
        for c in tiny_trial.cfg.cells()
    ]
    low = CostConfig(gpu_hour_usd=2.5, cpu_hour_usd=0.05, bill_cpu_on_gpu=False)
    high = CostConfig(gpu_hour_usd=2.5, cpu_hour_usd=0.5, bill_cpu_on_gpu=False)
    cheap, dear = [r.priced(low) for r in records], [r.priced(high) for r in records]
    assert trial_cost(cheap).usd > 0  # a CPU trial: ten times the CPU price, ten times the bill
    assert trial_cost(dear).usd == pytest.approx(10 * trial_cost(cheap).usd)
    assert trial_cost(dear).cpu_hours == trial_cost(records).cpu_hours
    for record in dear:
        assert record.cost.total.usd == pytest.approx(record.cost.total.cpu_hours * 0.5)


def test_a_price_change_leaves_every_stage_but_report_up_to_date(trial_copy: Path) -> None:
    """`dvc status` after `cost.gpu_hour_usd` changed: the report alone is out of date."""
    root = trial_copy
    copy_code(root)
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "commit", "-f", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    assert dvc_status(root) == {}
    set_params(root / "params.yaml", {"cost.gpu_hour_usd": 3.1})
    status = dvc_status(root)
    assert list(status) == ["report"], status
    assert "params.yaml" in json.dumps(status["report"])


def copy_code(root: Path) -> None:
    """dvc.yaml names the stages' code as deps: the project needs those files."""
    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "ldm", root / "ldm", ignore=shutil.ignore_patterns("__pycache__"))


def dvc_status(root: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_hours_survive_a_resume_point_and_add_up() -> None:
    first = Hours(wall_seconds=10.0, cpu_hours=0.5, gpu_hours=1.0, energy_kwh=0.2)
    assert Hours.from_state(first.state()) == first and Hours.from_state(None) is None
    both = first + Hours(wall_seconds=5.0, cpu_hours=0.25, gpu_hours=0.5, energy_kwh=0.1)
    assert both.attempts == 2 and both.wall_seconds == 15.0
    assert both.energy_kwh == pytest.approx(0.3)
    # One attempt whose GPUs nothing measured: the energy is unknown, not a part of it.
    assert (both + Hours(1.0, 0.1, 0.1, None)).energy_kwh is None
    with CostMeter(PRICES) as meter:
        burn_cpu(0.02)
    metrics = meter.metrics(cost.CPU, both)
    assert metrics["cost/attempts"] == 3
    assert metrics["cost/wall_seconds"] > 15.0 and metrics["cost/cpu_hours"] > 0.75
    # earlier attempts' GPU-hours are billed though this one ran on a CPU (GPU-hours only)
    assert metrics["cost/usd"] == pytest.approx(metrics["cost/gpu_hours"] * 2.0)
    assert "cost/energy_kwh" not in metrics  # this attempt on a CPU measured none
    assert StageCost.from_metrics(metrics).cpu_hours == metrics["cost/cpu_hours"]


def test_rank_0_hands_its_carried_hours_to_the_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun the launcher meters the job; rank 0's resume point holds the earlier
    attempts' hours, and its report carries them to the launcher's record."""
    carried = Hours(wall_seconds=60.0, cpu_hours=0.2, gpu_hours=0.0, energy_kwh=None)
    monkeypatch.setenv(launch.RANK_REPORTS_ENV, str(tmp_path))
    reports = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        launch.run_rank(lambda _: StageResult({"loss": 1.0}, [], carried=carried), None)
        reports.append(json.loads((tmp_path / f"rank-{rank:04d}.json").read_text()))
    result, _ = launch.outcome(reports, nprocs=2, exit_code=0)
    assert result.carried == carried


def _ddp_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))  # as torchrun sets them
    dist = init_distributed("cpu")
    try:
        clock = Clock()
        burn_cpu(0.1 * (rank + 1))
        own = clock.hours(cost.CPU)
        carried = Hours(wall_seconds=100.0, cpu_hours=1.0, gpu_hours=0.0, energy_kwh=None)
        total = hours_so_far(clock, carried, dist, torch.device("cpu"))
        Path(out, f"{rank}.json").write_text(json.dumps([own.state(), total.state()]))
    finally:
        cleanup()


def test_under_ddp_the_kept_hours_sum_every_rank(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2)
    (own0, total0), (own1, total1) = (
        [Hours.from_state(h) for h in json.loads((tmp_path / f"{rank}.json").read_text())]
        for rank in (0, 1)
    )
    # Every rank holds the same sums (rank 0 saves them, with its own wall time).
    assert (total0.cpu_hours, total0.gpu_hours) == (total1.cpu_hours, total1.gpu_hours)
    assert total0.cpu_hours == pytest.approx(1.0 + own0.cpu_hours + own1.cpu_hours, rel=1e-3)
    assert total0.wall_seconds == pytest.approx(100.0 + own0.wall_seconds, rel=1e-3)
    assert total0.attempts == 2 and total0.energy_kwh is None


@contextmanager
def stopped_after(n: int) -> Iterator[object]:
    """A progress bar that stops the loop once the bar reached `n` steps, as a kill would."""
    yield killed_after(n)


def test_the_trial_total_is_its_stage_runs_a_resumed_one_and_the_report_included(
    trial_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ldm import tracking
    from ldm.stages import train_diffusion as stage

    root, paths = trial_copy, Paths(trial_copy)
    work = paths.work("train_diffusion@plain-0")
    first = carried_at(work, 4)  # the finished tiny run: it is extended to 8 steps below
    assert first.attempts == 1
    cfg = load(root / "params.yaml", ["diffusion.steps=8"])
    # Extended from step 4, stopped at step 7 (resume point 6), then resumed to the end.
    monkeypatch.setattr(stage, "progress_bar", lambda *a, **k: stopped_after(7))
    with pytest.raises(KeyboardInterrupt):
        run("train_diffusion", cfg, paths, "plain-0")
    kept = carried_at(work, 6)
    assert kept.attempts == 2 and kept.wall_seconds > first.wall_seconds
    monkeypatch.setattr(stage, "progress_bar", lambda *a, **k: stopped_after(10**6))
    run("train_diffusion", cfg, paths, "plain-0")
    resumed = json.loads(paths.stage_metrics("train_diffusion@plain-0").read_text())
    assert resumed["cost/attempts"] == 3
    assert resumed["cost/wall_seconds"] > kept.wall_seconds
    assert resumed["cost/cpu_hours"] > kept.cpu_hours
    refresh_cost(paths, "plain-0")  # as `evaluate` would: its record holds the resumed cost

    with tracking.trial_run(root, cfg.tracking.experiment, root / "params.yaml", "trial", {}) as t:
        monkeypatch.setenv(tracking.PARENT_RUN_ENV, t.run_id)
        run("report", cfg, paths)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    total = client.get_run(t.run_id).data.metrics
    stage_runs = newest_finished_runs(client, cfg.tracking.experiment)
    assert set(stage_runs) == set(stage_names(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    killed = [r for r in client.search_runs([experiment]) if r.info.status == "KILLED"]
    assert [r.info.run_name for r in killed] == ["train_diffusion@plain-0"]
    assert not any(k.startswith("cost/") for k in killed[0].data.metrics)  # only carried
    for key in ("usd", "cpu_hours", "gpu_hours", "wall_seconds"):
        summed = sum(r.data.metrics[f"cost/{key}"] for r in stage_runs.values())
        assert total[f"cost/{key}"] == pytest.approx(summed, rel=1e-9), key
    # The report's own run is in the total, and its `trial_usd` is that total.
    report = stage_runs["report"].data.metrics
    others = sum(r.data.metrics["cost/usd"] for n, r in stage_runs.items() if n != "report")
    assert report["cost/usd"] > 0
    assert total["cost/usd"] == pytest.approx(others + report["cost/usd"], rel=1e-9)
    assert report["trial_usd"] == pytest.approx(total["cost/usd"], rel=1e-9)


def refresh_cost(paths: Paths, cell: str) -> None:
    """A cell's record with the costs of the stages before it read again, as `evaluate`
    reads them (its quality numbers do not matter here, and evaluating takes a while)."""
    from ldm.files import write_json_atomic
    from ldm.stages.upstream import cell_costs

    file = paths.stage_metrics(f"evaluate@{cell}")
    record = EvaluateRecord.model_validate_json(file.read_text())
    own = f"evaluate@{cell}"
    stages = cell_costs(paths, cell) | {own: record.cost.stages[own]}
    cost = VariantCost(total=total_cost(list(stages.values())), stages=stages)
    write_json_atomic(file, record.model_copy(update={"cost": cost}).model_dump())


def carried_at(work: Path, step: int) -> Hours:
    state = torch.load(work / f"{checkpoint.STEP_PREFIX}{step:08d}" / "state.pt", weights_only=True)
    return Hours.from_state(state["hours"])


def newest_finished_runs(client: MlflowClient, experiment: str) -> dict:
    """Each stage's newest finished run, by its name: the runs whose cost the trial paid."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs(
        [experiment_id],
        "tags.`ldm.kind` = 'stage' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    newest = {}
    for found in runs:
        newest.setdefault(found.info.run_name, found)
    return newest
