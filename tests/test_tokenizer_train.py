"""The tokenizer's training loop: exact resume, divergence handling, atomic checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm import config
from ldm.data.batches import ImageBatches, to_model_range
from ldm.errors import LdmError
from ldm.pretrained.foundation import load_foundation
from ldm.stages.train_tokenizer import RESUMABLE_SETTINGS
from ldm.tokenizer.align import VFProjection
from ldm.tokenizer.model import Tokenizer, TokenizerArch
from ldm.tokenizer.train import Alignment, TrainRun, fit
from ldm.tracker import NullTracker
from ldm.training import checkpoint
from ldm.training.resume import NonFiniteLoss
from ldm.training.schedule import FLOOR, resumed_schedule
from tests.conftest import killed_after

REPO = Path(__file__).resolve().parents[1]
ARCH = TokenizerArch(
    ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), latent_channels=4, resolution=16
)


def smooth_images(n: int, seed: int) -> np.ndarray:
    """n random colour gradients, 16 x 16: easy to reconstruct, different from each other."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, 16)
    x, y = np.meshgrid(ramp, ramp)  # (16, 16) each
    images = [
        np.stack([a * x, b * y, c * (x + y) / 2], -1) for a, b, c in rng.uniform(0, 255, (n, 3))
    ]
    return np.array(images).astype(np.uint8)  # (n, 16, 16, 3)


IMAGES = smooth_images(12, 0)


def make_run(
    work: Path,
    steps: int,
    aligned: bool = False,
    model: Tokenizer | None = None,
    notices: list[str] | None = None,
    **overrides: object,
) -> TrainRun:
    sets = {
        "steps": steps,
        "batch_size": 4,
        "warmup_steps": 1,
        "eval_every": 3,
        "checkpoint_every": 2,
        "grid_images": 2,
        "perceptual": "none",
        **overrides,
    }
    cfg = config.load(REPO / "params.yaml", [f"tokenizer.{k}={v}" for k, v in sets.items()])
    # As the stage splits them: the recipe must match to resume, the rest may change.
    recipe, resumable = checkpoint.split_settings(
        "tokenizer", cfg.section("tokenizer"), RESUMABLE_SETTINGS
    )
    torch.manual_seed(0)
    model = model or Tokenizer(ARCH)
    alignment = None
    if aligned:
        foundation = load_foundation("effnet_lite0", None, None)
        alignment = Alignment(
            foundation,
            VFProjection(4, foundation.feature_dim),
            list(cfg.align.phases),
            0.5,
            0.25,
            1.0,
            1.0,
            1e8,
        )
    return TrainRun(
        model=model,
        cfg=cfg.tokenizer,
        steps=steps,
        batches=ImageBatches(IMAGES, np.zeros(12, np.int64), 4, seed=0, hflip=True),
        val_images=to_model_range(smooth_images(4, 1)),
        perceptual=None,
        alignment=alignment,
        work_dir=work,
        identity={"architecture": model.arch.to_dict(), "align": aligned, **recipe},
        settings=resumable,
        device=torch.device("cpu"),
        notice=(notices if notices is not None else []).append,
    )


@pytest.mark.parametrize("aligned", [False, True])
def test_resume_after_a_kill_gives_the_same_weights(tmp_path: Path, aligned: bool) -> None:
    uninterrupted = make_run(tmp_path / "a", 6, aligned)
    fit(uninterrupted, NullTracker(), lambda n, **_: None)

    with pytest.raises(KeyboardInterrupt):
        fit(make_run(tmp_path / "b", 6, aligned), NullTracker(), killed_after(5))
    assert checkpoint.latest_state(tmp_path / "b").name == "step-00000004"

    resumed = make_run(tmp_path / "b", 6, aligned)  # a new process: fresh objects
    fit(resumed, NullTracker(), lambda n, **_: None)
    assert resumed.history["resumed_from_step"] == 4
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)
    if aligned:
        ours, theirs = (r.alignment.projection.state_dict() for r in (resumed, uninterrupted))
        for name, value in ours.items():
            torch.testing.assert_close(value, theirs[name], msg=name)


def test_raising_steps_continues_an_interrupted_run(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        fit(make_run(tmp_path, 6), NullTracker(), killed_after(5))
    notices: list[str] = []
    longer = make_run(tmp_path, 8, notices=notices, checkpoint_every=3, eval_every=4)
    steps_run = []
    fit(longer, NullTracker(), lambda n, **_: steps_run.append(n))
    assert longer.history["resumed_from_step"] == 4
    assert sum(steps_run) == 8  # 4 resumed, 4 trained
    assert "resuming at step 4" in notices[0]
    assert "tokenizer.steps: 6 -> 8" in notices[0] and "tokenizer.eval_every: 3 -> 4" in notices[0]


def test_a_finished_run_is_extended_not_restarted(tmp_path: Path) -> None:
    fit(make_run(tmp_path, 4), NullTracker(), lambda n, **_: None)
    extended = make_run(tmp_path, 6)
    fit(extended, NullTracker(), lambda n, **_: None)
    assert extended.history["resumed_from_step"] == 4


def test_a_changed_recipe_restarts_and_keeps_the_old_state(tmp_path: Path) -> None:
    fit(make_run(tmp_path / "work", 4), NullTracker(), lambda n, **_: None)
    notices: list[str] = []
    changed = make_run(tmp_path / "work", 4, notices=notices, lr=0.001)
    fit(changed, NullTracker(), lambda n, **_: None)
    assert "resumed_from_step" not in changed.history  # a finished run would ignore the new lr
    assert "tokenizer.lr: 0.002 -> 0.001" in notices[0] and "cannot continue" in notices[0]
    assert (tmp_path / "work.set-aside-at-step-4" / "step-00000004").is_dir()


def test_a_changed_architecture_sets_the_old_state_aside_and_says_why(tmp_path: Path) -> None:
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        fit(make_run(work, 6), NullTracker(), killed_after(3))
    notices: list[str] = []
    wider = TokenizerArch(**{**ARCH.to_dict(), "ch": 8, "ch_mult": (1, 2)})
    changed = make_run(work, 6, model=Tokenizer(wider), notices=notices)
    fit(changed, NullTracker(), lambda n, **_: None)
    assert "resumed_from_step" not in changed.history
    (notice,) = notices
    assert "architecture" in notice and "cannot continue" in notice
    aside = tmp_path / "work.set-aside-at-step-2"
    assert str(aside) in notice
    assert checkpoint.latest_state(aside).name == "step-00000002"  # kept, not deleted


def test_training_reduces_the_reconstruction_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, 40, lr=0.003)
    run.history.clear()
    with torch.no_grad():
        before = (run.model(to_model_range(IMAGES), sample=False)[0] - to_model_range(IMAGES)).abs()
    metrics = fit(run, NullTracker(), lambda n, **_: None)
    with torch.no_grad():
        after = (run.model(to_model_range(IMAGES), sample=False)[0] - to_model_range(IMAGES)).abs()
    assert after.mean().item() < 0.5 * before.mean().item()
    assert metrics["train/steps"] == 40 and metrics["train/final_loss"] > 0


class Exploding(Tokenizer):
    """Returns NaN reconstructions from the 4th call on, as a diverged model would."""

    calls = 0

    def forward(self, x, **kwargs):  # noqa: ANN001, ANN003, ANN201
        recon, posterior, z = super().forward(x, **kwargs)
        Exploding.calls += 1
        return (recon * float("nan") if Exploding.calls > 3 else recon), posterior, z


def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(tmp_path: Path) -> None:
    Exploding.calls = 0
    torch.manual_seed(0)
    run = make_run(tmp_path, 6, model=Exploding(ARCH))
    with pytest.raises(NonFiniteLoss, match="step 3") as info:
        fit(run, NullTracker(), lambda n, **_: None)
    assert "step-00000002" in str(info.value)
    assert checkpoint.latest_state(tmp_path).name == "step-00000002"


def test_a_failed_checkpoint_write_leaves_the_last_complete_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = torch.nn.Linear(2, 2)
    checkpoint.save_state(tmp_path, 2, {"model": model}, {"note": "good"})

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_state(tmp_path, 4, {"model": model}, {"note": "new"})
    assert checkpoint.latest_state(tmp_path).name == "step-00000002"
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000002"]  # no half-written folder
    monkeypatch.undo()
    state = checkpoint.load_state(tmp_path / "step-00000002", {"model": torch.nn.Linear(2, 2)})
    assert state["note"] == "good" and state["step"] == 2


def spy_on_phases(run: TrainRun, seen: dict[int, list[int]]) -> TrainRun:
    """Record the index of the alignment phase the loop picks for every step it trains."""
    real = run.alignment.phase

    def phase(step: int, total: int):  # noqa: ANN202
        chosen = real(step, total)
        seen.setdefault(step, []).append(run.alignment.phases.index(chosen))
        return chosen

    run.alignment.phase = phase
    return run


def test_an_extended_run_keeps_the_rates_and_phases_of_its_past(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ldm.tokenizer.train as loop

    monkeypatch.setattr(loop, "LOG_EVERY", 1)  # train/lr of every step
    phases: dict[int, list[int]] = {}
    first, extension = Recorder(), Recorder()
    with pytest.raises(KeyboardInterrupt):  # steps 0-4 trained, resume point at 4
        fit(spy_on_phases(make_run(tmp_path, 6, True), phases), first, killed_after(5))
    run = spy_on_phases(make_run(tmp_path, 10, True), phases)
    fit(run, extension, lambda n, **_: None)
    assert run.history["resumed_from_step"] == 4

    # The saved schedule gives the steps the first process kept the rates it trained them with,
    # and the extension the rates it trained with.
    state = torch.load(checkpoint.latest_state(tmp_path) / "state.pt", weights_only=True)
    tok = run.cfg
    saved = resumed_schedule(
        tok.lr, tok.lr_schedule, tok.warmup_steps, 10, state, "tokenizer.steps"
    )
    assert [saved.rate(s) for s in range(4)] == [first.lr[s + 1] for s in range(4)]
    assert [saved.rate(s) for s in range(4, 10)] == [extension.lr[s + 1] for s in range(4, 10)]
    # The extension: a cosine from the rate step 4 had in the first process to the floor at 10.
    reached = first.lr[5] / tok.lr  # warm-up (1 step) is over
    for step in range(4, 10):
        cosine = 0.5 * (1 + math.cos(math.pi * (step - 4) / (10 - 4)))
        assert extension.lr[step + 1] == pytest.approx(
            tok.lr * (FLOOR + (reached - FLOOR) * cosine)
        )
    # Phases split the first 6 steps in halves: step 3 on is the last phase, before and after.
    assert phases == {s: [0] for s in range(3)} | {3: [1], 4: [1, 1]} | {
        s: [1] for s in range(5, 10)
    }


def test_one_process_trains_in_a_work_folder_at_a_time(tmp_path: Path) -> None:
    work = tmp_path / "train_tokenizer@plain"
    with (
        checkpoint.exclusive(work),
        pytest.raises(LdmError, match="another process is training"),
        checkpoint.exclusive(work),
    ):
        pass
    with checkpoint.exclusive(work):  # released when the first one finished
        pass


def test_the_patchgan_loss_reaches_the_generator_after_disc_start(tmp_path: Path) -> None:
    recorder = Recorder()
    with_gan = make_run(tmp_path / "gan", 5, disc_weight=0.5, disc_start=2)
    fit(with_gan, recorder, lambda n, **_: None)
    without = make_run(tmp_path / "plain", 5)
    fit(without, NullTracker(), lambda n, **_: None)
    logged = {key for metrics in recorder.metrics for key in metrics}
    assert {"train/gan_g", "train/gan_d", "train/gan_adaptive_weight"} <= logged
    # Same start, same batches: the decoders part only through the GAN term.
    decoder = "decoder.conv_out.weight"
    assert not torch.equal(
        with_gan.model.state_dict()[decoder], without.model.state_dict()[decoder]
    )


def test_two_steps_before_disc_start_match_a_run_without_the_gan(tmp_path: Path) -> None:
    with_gan = make_run(tmp_path / "gan", 2, disc_weight=0.5, disc_start=2)
    fit(with_gan, NullTracker(), lambda n, **_: None)
    without = make_run(tmp_path / "plain", 2)
    fit(without, NullTracker(), lambda n, **_: None)
    for name, value in with_gan.model.state_dict().items():
        torch.testing.assert_close(value, without.model.state_dict()[name], msg=name)


def test_the_real_loop_weighs_the_vf_loss_on_the_encoders_last_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ldm.tokenizer.train as loop

    seen: list[torch.Tensor] = []
    real = loop.adaptive_vf_weight

    def spy(rec, vf, layer_weight, max_value, *rest):  # noqa: ANN001, ANN202
        seen.append(layer_weight)
        return real(rec, vf, layer_weight, max_value, *rest)

    monkeypatch.setattr(loop, "adaptive_vf_weight", spy)
    run = make_run(tmp_path, 2, aligned=True)
    fit(run, NullTracker(), lambda n, **_: None)
    assert len(seen) == 2
    assert all(w is run.model.encoder.conv_out.weight for w in seen)


class Recorder(NullTracker):
    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.lr: dict[int, float] = {}  # train/lr by the step count it was logged at

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append(metrics)
        if "train/lr" in metrics:
            self.lr[step] = metrics["train/lr"]
