"""The diffusion training loop: exact resume, accumulation and DDP equivalence, divergence."""

from __future__ import annotations

import math
import os
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ldm import config
from ldm.diffusion.flow import flow_loss, interpolate, velocity_target
from ldm.diffusion.model import LightningDiT
from ldm.diffusion.train import DiffusionRun, batch_indices, fit_diffusion
from ldm.errors import LdmError
from ldm.stages.train_diffusion import RESUMABLE_SETTINGS
from ldm.tracker import NullTracker
from ldm.training import checkpoint
from ldm.training.distributed import Dist, cleanup, init_distributed
from ldm.training.resume import NonFiniteLoss
from ldm.training.schedule import FLOOR, resumed_schedule
from tests.conftest import killed_after

REPO = Path(__file__).resolve().parents[1]
CLASSES = 3
LATENTS = torch.randn(12, 4, 4, 4, generator=torch.Generator().manual_seed(0))  # (N, C, h, w)
LABELS = torch.arange(12) % CLASSES


def tiny_model(cls: type[LightningDiT] = LightningDiT) -> LightningDiT:
    torch.manual_seed(0)
    return cls(4, 4, CLASSES, depth=2, width=32, heads=2, patch=2, class_dropout=0.2)


def make_run(
    work: Path, steps: int, model: LightningDiT | None = None, dist: Dist | None = None, **sets: Any
) -> DiffusionRun:
    sets = {
        "steps": steps,
        "batch_size": 8,
        "micro_batch_size": 8,
        "lr": 0.002,
        "warmup_steps": 2,
        "ema_decay": 0.9,
        "checkpoint_every": 2,
        "sample_every": 1000,
        "grad_clip": 1.0,
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
        "on_non_finite": "stop",
        **sets,
    }
    overrides = [f"diffusion.{k}={v}" for k, v in sets.items()] + ["sample.steps=2"]
    cfg = config.load(REPO / "params.yaml", overrides)
    recipe, resumable = checkpoint.split_settings(
        "diffusion", cfg.section("diffusion"), RESUMABLE_SETTINGS
    )
    return DiffusionRun(
        model=model or tiny_model(),
        cfg=cfg.diffusion,
        sample_cfg=cfg.sample,
        latents=LATENTS,
        labels=LABELS,
        num_classes=CLASSES,
        work_dir=work,
        identity={"architecture": (model or tiny_model()).config, **recipe},
        settings=resumable,
        device=torch.device("cpu"),
        notice=lambda _: None,
        dist=dist or Dist(),
    )


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, **tol: float) -> None:
    theirs = b.state_dict()
    for name, value in a.state_dict().items():
        torch.testing.assert_close(value, theirs[name], msg=name, **tol)


class Recorder(NullTracker):
    """Keeps what a real tracker would store."""

    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}
        self.images: list[tuple[str, int, np.ndarray]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.setdefault(step or 0, {}).update(metrics)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self.images.append((key, step, image))


def test_resume_after_a_kill_gives_the_same_weights_and_ema(tmp_path: Path) -> None:
    uninterrupted = make_run(tmp_path / "a", 6)
    fit_diffusion(uninterrupted, NullTracker(), lambda n, **_: None)

    with pytest.raises(KeyboardInterrupt):
        fit_diffusion(make_run(tmp_path / "b", 6), NullTracker(), killed_after(5))
    assert checkpoint.latest_state(tmp_path / "b").name == "step-00000004"

    resumed = make_run(tmp_path / "b", 6)  # a new process: fresh objects
    fit_diffusion(resumed, NullTracker(), lambda n, **_: None)
    assert resumed.history["resumed_from_step"] == 4
    assert_same_weights(resumed.model, uninterrupted.model)
    assert_same_weights(resumed.ema, uninterrupted.ema)
    assert resumed.model.y_embedder.dropout == 0.2  # the loop's switch-off is undone


def test_raising_steps_continues_an_interrupted_run_and_extends_a_finished_one(
    tmp_path: Path,
) -> None:
    with pytest.raises(KeyboardInterrupt):
        fit_diffusion(make_run(tmp_path, 6), NullTracker(), killed_after(5))
    notices: list[str] = []
    longer = make_run(tmp_path, 8, sample_every=999)
    longer.notice = notices.append
    steps_run: list[int] = []
    fit_diffusion(longer, NullTracker(), lambda n, **_: steps_run.append(n))
    assert longer.history["resumed_from_step"] == 4 and sum(steps_run) == 8
    assert "resuming at step 4" in notices[0] and "sample_every" in notices[0]

    extended = make_run(tmp_path, 10)
    fit_diffusion(extended, NullTracker(), lambda n, **_: None)
    assert extended.history["resumed_from_step"] == 8  # the finished run's last step


def test_training_overfits_a_few_latents(tmp_path: Path) -> None:
    # 8 latents, one class each, constant over positions: a tiny model can memorise them.
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 4, 1, 1, generator=g).expand(8, 4, 4, 4).contiguous()  # (8, C, h, w)
    torch.manual_seed(0)
    model = LightningDiT(4, 4, 8, depth=2, width=32, heads=2, patch=2)
    run = make_run(tmp_path, 150, model=model, lr=0.01)
    run.latents, run.labels, run.num_classes = x0, torch.arange(8), 8
    noise, t = torch.randn(64, 4, 4, 4, generator=g), torch.rand(64, generator=g)
    x0, y = x0.repeat(8, 1, 1, 1), torch.arange(8).repeat(8)  # (64, C, h, w), (64,)

    def loss() -> float:
        with torch.no_grad():
            pred = run.model.eval()(interpolate(x0, noise, t), t, y)
            return flow_loss(pred, velocity_target(x0, noise), run.cfg.cos_weight)[0].item()

    before = loss()
    metrics = fit_diffusion(run, NullTracker(), lambda n, **_: None)
    assert loss() < 0.5 * before
    assert metrics["train/steps"] == 150 and 0 < metrics["train/final_loss"] < 0.5 * before


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    whole = make_run(tmp_path / "a", 3, micro_batch_size=8)
    split = make_run(tmp_path / "b", 3, micro_batch_size=4)
    logs = [Recorder(), Recorder()]
    for run, tracker in zip((whole, split), logs, strict=True):
        fit_diffusion(run, tracker, lambda n, **_: None)
    assert_same_weights(split.model, whole.model, rtol=1e-4, atol=1e-6)
    # Adam hides a wrongly scaled gradient from the weights; the logged norm shows it.
    expected = logs[0].metrics[3]
    for key, value in logs[1].metrics[3].items():
        if not key.endswith(("images_per_second", "peak_memory_mib")):
            assert value == pytest.approx(expected[key], rel=1e-4), key
    with pytest.raises(LdmError, match="multiple of world_size"):
        fit_diffusion(
            make_run(tmp_path / "c", 3, micro_batch_size=3), NullTracker(), lambda n, **_: None
        )


def _ddp_worker(rank: int, port: int, work: str, out: str) -> None:
    torch.set_num_threads(1)
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))  # as torchrun sets them
    dist = init_distributed("cpu")
    try:
        run = make_run(Path(work), 4, dist=dist, micro_batch_size=2)
        tracker = Recorder()
        fit_diffusion(run, tracker, lambda n, **_: None)
        if dist.is_main:
            weights = {"model": run.model.state_dict(), "ema": run.ema.state_dict()}
            torch.save(weights | {"metrics": tracker.metrics[4]}, out)
    finally:
        cleanup()


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(port, str(tmp_path / "ddp"), str(out)), nprocs=2)
    single, tracker = make_run(tmp_path / "one", 4, micro_batch_size=2), Recorder()
    fit_diffusion(single, tracker, lambda n, **_: None)
    ddp = torch.load(out, weights_only=True)
    for key, value in tracker.metrics[4].items():  # loss, grad norm and t-bins are global
        if not key.endswith(("images_per_second", "peak_memory_mib")):
            assert ddp["metrics"][key] == pytest.approx(value, rel=1e-4), key
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-4, atol=1e-6, msg=name)
    for name, value in single.ema.state_dict().items():
        torch.testing.assert_close(ddp["ema"][name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert checkpoint.latest_state(tmp_path / "ddp").name == "step-00000004"  # the last step


class Exploding(LightningDiT):
    """Returns NaN velocities on one forward call, as a diverged model would."""

    calls, nan_at = 0, 4

    def forward(self, x, t, y=None):  # noqa: ANN001, ANN201
        Exploding.calls += 1
        out = super().forward(x, t, y)
        return out * float("nan") if Exploding.calls == Exploding.nan_at else out


def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(tmp_path: Path) -> None:
    Exploding.calls = 0
    run = make_run(tmp_path, 6, model=tiny_model(Exploding))
    with pytest.raises(NonFiniteLoss, match="step 3") as info:
        fit_diffusion(run, NullTracker(), lambda n, **_: None)
    assert "step-00000002" in str(info.value)


def test_rollback_reloads_the_last_checkpoint_and_skips_the_bad_batch(tmp_path: Path) -> None:
    Exploding.calls = 0
    run = make_run(tmp_path, 6, model=tiny_model(Exploding), on_non_finite="rollback")
    tracker = Recorder()
    metrics = fit_diffusion(run, tracker, lambda n, **_: None)
    assert metrics["train/rollbacks"] == 1 and tracker.metrics[3]["train/rollbacks"] == 1
    assert Exploding.calls == 7  # steps 0-3, step 2 again, step 3 skipped, steps 4-5
    assert all(torch.isfinite(p).all() for p in run.model.parameters())

    Exploding.calls, Exploding.nan_at = 0, 2  # diverges before the first checkpoint
    try:
        with pytest.raises(NonFiniteLoss, match=r"\(none yet\)"):
            fit_diffusion(
                make_run(tmp_path / "b", 6, model=tiny_model(Exploding), on_non_finite="rollback"),
                NullTracker(),
                lambda n, **_: None,
            )
    finally:
        Exploding.nan_at = 4


def test_logs_loss_by_t_bin_and_sample_grids(tmp_path: Path) -> None:
    def decode(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2))  # (B,3,8,8)

    run = make_run(tmp_path, 20, sample_every=10)
    run.decode = decode
    tracker = Recorder()
    fit_diffusion(run, tracker, lambda n, **_: None)
    assert sorted(tracker.metrics) == [10, 20]
    logged = tracker.metrics[10]
    by_t = {k: v for k, v in logged.items() if k.startswith("train/loss_t")}
    assert len(by_t) >= 5 and all(v > 0 for v in by_t.values())
    assert all(re.fullmatch(r"train/loss_t0\.\d-(0\.\d|1\.0)", key) for key in by_t)
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/images_per_second"):
        assert logged[key] > 0, key
    assert logged["train/gpu_hours"] == 0 and logged["train/peak_memory_mib"] > 0
    assert [(key, step, image.shape) for key, step, image in tracker.images] == [
        ("samples", 10, (16, 64, 3)),
        ("samples", 20, (16, 64, 3)),
    ]
    assert tracker.images[0][2].dtype == np.uint8


def test_batches_cover_each_epoch() -> None:
    epoch = torch.cat([batch_indices(12, 4, 0, s) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))
    assert torch.equal(batch_indices(12, 4, 0, 5), batch_indices(12, 4, 0, 5))


def rates(tracker: Recorder) -> dict[int, float]:
    """train/lr by the step count it was logged at."""
    return {step: m["train/lr"] for step, m in tracker.metrics.items() if "train/lr" in m}


def test_an_extended_run_keeps_the_rates_of_its_past(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ldm.diffusion.train as loop

    monkeypatch.setattr(loop, "LOG_EVERY", 1)  # train/lr of every step
    first, extension = Recorder(), Recorder()
    with pytest.raises(KeyboardInterrupt):  # steps 0-4 trained, resume point at 4
        fit_diffusion(make_run(tmp_path, 6), first, killed_after(5))
    run = make_run(tmp_path, 10)
    fit_diffusion(run, extension, lambda n, **_: None)
    assert run.history["resumed_from_step"] == 4
    before, after = rates(first), rates(extension)

    state = torch.load(checkpoint.latest_state(tmp_path) / "state.pt", weights_only=True)
    cfg = run.cfg
    saved = resumed_schedule(
        cfg.lr, cfg.lr_schedule, cfg.warmup_steps, 10, state, "diffusion.steps"
    )
    assert [saved.rate(s) for s in range(4)] == [before[s + 1] for s in range(4)]
    assert [saved.rate(s) for s in range(4, 10)] == [after[s + 1] for s in range(4, 10)]
    reached = before[5] / cfg.lr  # warm-up (2 steps) is over
    for step in range(4, 10):
        cosine = 0.5 * (1 + math.cos(math.pi * (step - 4) / (10 - 4)))
        assert after[step + 1] == pytest.approx(cfg.lr * (FLOOR + (reached - FLOOR) * cosine))


def test_a_resume_point_saved_without_a_schedule_still_extends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ldm.diffusion.train as loop

    monkeypatch.setattr(loop, "LOG_EVERY", 1)
    fit_diffusion(make_run(tmp_path, 4), NullTracker(), lambda n, **_: None)
    path = checkpoint.latest_state(tmp_path) / "state.pt"
    state = torch.load(path, weights_only=True)
    del state["schedule"]  # as written before schedules were saved
    torch.save(state, path)
    run, extension = make_run(tmp_path, 7), Recorder()
    fit_diffusion(run, extension, lambda n, **_: None)
    assert run.history["resumed_from_step"] == 4
    # Its 4 recorded steps had decayed it to the floor: the added steps hold the floor.
    assert rates(extension) == {s: pytest.approx(run.cfg.lr * FLOOR) for s in (5, 6, 7)}
