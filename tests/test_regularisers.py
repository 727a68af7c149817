"""The tokenizer regularisers: equivariance (EQ-VAE) and latent denoising (l-DeTok)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ldm import config
from ldm.config import ConfigError
from ldm.stages.train_tokenizer import variant_identity
from ldm.tokenizer.losses import reconstruction_loss
from ldm.tokenizer.model import Tokenizer
from ldm.tokenizer.regularisers import (
    Equivariance,
    LatentDenoising,
    Transform,
    cell_mask,
    equivariance_loss,
    masked_input,
    noised_latent,
)
from ldm.tokenizer.train import TrainRun, fit
from ldm.tracker import NullTracker
from ldm.training import checkpoint
from tests.conftest import killed_after
from tests.test_tokenizer_train import ARCH, Recorder, make_run

REPO = Path(__file__).resolve().parents[1]
EQ = Equivariance(weight=1.0, share=0.5, scales=(0.5, 0.25), rotations=True)
LD = LatentDenoising(gamma=3.0, mask=True, mask_ratio=(-0.1, 0.7))


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def test_transform_is_antialiased_bilinear_then_a_turn() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)  # 4·row + column
    # x1/2 with a tent twice as wide, renormalised at the border: along a row [0, 1, 2, 3]
    # weighs (3, 3, 1, 0)/7 -> 5/7 and (0, 1, 3, 3)/7 -> 16/7, and columns alike.
    expected = torch.tensor([[4 * r + c for c in (5 / 7, 16 / 7)] for r in (5 / 7, 16 / 7)])
    torch.testing.assert_close(Transform(0.5, 0)(x)[0, 0], expected)
    assert torch.equal(Transform(1.0, 1)(x), torch.rot90(x, 1, dims=(-2, -1)))
    with pytest.raises(ValueError, match="whole size"):
        Transform(0.25, 0)(torch.zeros(1, 1, 6, 6))


def test_equivariance_loss_is_its_formula() -> None:
    z = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # (1, 1, 2, 2): tau = x1/2 gives 4
    x = torch.zeros(1, 1, 4, 4)
    x[..., :2, :2] = 2.0  # tau(x): 0.5
    got = equivariance_loss(lambda t: 10 * t, z, x, Transform(0.5, 0), l1)
    assert got.item() == pytest.approx(abs(40.0 - 0.5))


def test_a_decoder_that_commutes_with_tau_has_zero_equivariance_loss() -> None:
    torch.manual_seed(0)
    # f = 1 and a 1x1 conv decoder: it commutes with resizing (weights summing to 1) and turns
    pointwise = nn.Conv2d(4, 3, 1)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        x = pointwise(z)  # the image z encodes exactly
        for tau in (Transform(0.5, 0), Transform(0.25, 3), Transform(1.0, 2)):
            assert equivariance_loss(pointwise, z, x, tau, l1).item() < 1e-5

        def squashed(t: torch.Tensor) -> torch.Tensor:  # does not commute: tanh of a mean
            return pointwise(t).tanh()

        x = squashed(z)
        assert equivariance_loss(squashed, z, x, Transform(0.5, 0), l1).item() > 1e-3


def test_small_images_reach_the_perceptual_term_at_training_size() -> None:
    sizes = []

    def perceptual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sizes.append(a.shape[-1])
        return (a - b).pow(2).flatten(1).mean(1)

    r, x = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    rec, dist_l1, dist = reconstruction_loss(r, x, perceptual, 0.5, side=16)
    assert sizes == [16] and dist.item() == pytest.approx(1.0)
    assert dist_l1.item() == 1.0 and rec.item() == pytest.approx(1.0 + 0.5 * 1.0)
    rec, _, none = reconstruction_loss(r, x, None, 0.5, side=16)
    assert rec.item() == 1.0 and none.item() == 0.0


def test_noised_latent_is_its_formula_and_t_0_leaves_z() -> None:
    z, eps = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), -1.0)
    got = noised_latent(z, torch.tensor([0.25, 1.0]), eps, gamma=3.0)
    assert got.flatten().tolist() == [0.75 * 2 + 0.25 * 3 * -1, -3.0]
    assert torch.equal(noised_latent(z, torch.zeros(2), eps, 3.0), z)


def test_with_t_0_the_tokenizer_reconstructs_exactly_as_without() -> None:
    torch.manual_seed(0)
    model, x = Tokenizer(ARCH), torch.rand(2, 3, 16, 16) * 2 - 1
    noise = torch.randn(2, *model.latent_shape)
    eps = torch.randn_like(noise)
    plain, _, z = model(x, noise=noise)
    zero_t, _, z0 = model(x, noise=noise, latent_noise=(torch.zeros(2), 3.0 * eps))
    assert torch.equal(zero_t, plain) and torch.equal(z0, z)
    t = torch.tensor([0.3, 0.9])
    noised, _, _ = model(x, noise=noise, latent_noise=(t, 3.0 * eps))
    torch.testing.assert_close(noised, model.decoder(noised_latent(z, t, eps, 3.0)))


def test_masks_blank_whole_cells_at_the_drawn_ratio() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.4, 0.6, 0.8]])
    keep = cell_mask(scores, torch.tensor([0.5, 0.0]))
    assert keep.tolist() == [[True, False, True, False], [True] * 4]
    x = torch.ones(2, 3, 4, 4)
    out = masked_input(x, keep.view(2, 1, 2, 2), patch=2)
    assert out[0, :, :2, 2:].abs().sum() == 0 and out[0, :, 2:, 2:].abs().sum() == 0
    assert torch.equal(out[0, :, :2, :2], x[0, :, :2, :2]) and torch.equal(out[1], x[1])


def test_draws_are_a_function_of_seed_and_step() -> None:
    taus = [EQ.draw(0, step) for step in range(200)]
    assert taus == [EQ.draw(0, step) for step in range(200)]
    assert taus != [EQ.draw(1, step) for step in range(200)]
    applied = [tau for tau in taus if tau is not None]
    assert 70 < len(applied) < 130  # share 0.5
    assert {tau.scale for tau in applied} == {0.5, 0.25}
    assert {tau.quarter_turns for tau in applied} == {0, 1, 2, 3}
    a = LD.draw(0, 5, (4, 8, 8), 6, torch.device("cpu"))
    b = LD.draw(0, 5, (4, 8, 8), 6, torch.device("cpu"))
    assert torch.equal(a.eps, b.eps) and torch.equal(a.keep, b.keep) and torch.equal(a.t, b.t)
    assert not torch.equal(a.eps, LD.draw(0, 6, (4, 8, 8), 6, torch.device("cpu")).eps)
    assert torch.equal(a.rows(slice(2, 4)).eps, a.eps[2:4])


def regularised(work: Path, steps: int, aligned: bool = False) -> TrainRun:
    run = make_run(work, steps, aligned)
    run.equivariance, run.latent_denoising = EQ, LD
    return run


def test_align_equivariance_and_denoising_train_together(tmp_path: Path) -> None:
    run, tracker = regularised(tmp_path, 10, aligned=True), Recorder()
    history = fit(run, tracker, lambda n, **_: None)
    assert math.isfinite(history["train/final_loss"])
    for key in ("train/eq", "train/denoise_t", "train/masked", "train/vf", "train/l1"):
        points = [m[key] for m in tracker.metrics if key in m]
        assert points and all(map(math.isfinite, points)), key


def test_a_regularised_run_resumes_exactly(tmp_path: Path) -> None:
    uninterrupted = regularised(tmp_path / "a", 6)
    fit(uninterrupted, NullTracker(), lambda n, **_: None)
    with pytest.raises(KeyboardInterrupt):
        fit(regularised(tmp_path / "b", 6), NullTracker(), killed_after(5))
    assert checkpoint.latest_state(tmp_path / "b").name == "step-00000004"
    resumed = regularised(tmp_path / "b", 6)
    fit(resumed, NullTracker(), lambda n, **_: None)
    assert resumed.history["resumed_from_step"] == 4
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)


def test_scales_that_do_not_divide_the_latent_grid_are_refused(tmp_path: Path) -> None:
    from ldm.errors import LdmError

    run = make_run(tmp_path, 2)
    run.equivariance = Equivariance(1.0, 1.0, (0.3,), False)  # 8 latent cells x 0.3
    with pytest.raises(LdmError, match="equivariance.scales"):
        fit(run, NullTracker(), lambda n, **_: None)


def test_config_sections_validate_and_refuse_unknown_keys() -> None:
    params = REPO / "params.yaml"
    cfg = config.load(params, ["variants.plain.equivariance=true"])
    assert cfg.variant("plain").equivariance and not cfg.variant("plain").latent_denoising
    assert not cfg.variant("aligned").equivariance  # false when left out
    every = "{x: {preset: f4d8, align: true, equivariance: true, latent_denoising: true}}"
    both = config.load(params, [f"variants={every}"]).variant("x")
    assert both.align and both.equivariance and both.latent_denoising
    for bad, named in [
        ("equivariance.warp=1", "equivariance.warp"),
        ("latent_denoising.sigma=1", "latent_denoising.sigma"),
        ("variants={x: {preset: f4d8, align: false, eqvariance: true}}", "variants.x.eqvariance"),
        ("equivariance.scales=[1.5]", "equivariance.scales"),
        ("equivariance.share=0", "equivariance.share"),
        ("latent_denoising.gamma=-1", "latent_denoising.gamma"),
        ("latent_denoising.mask_ratio=[0.1]", "latent_denoising.mask_ratio"),
    ]:
        with pytest.raises(ConfigError, match=named):
            config.load(params, [bad])


def test_only_a_variant_using_a_regulariser_has_its_section_in_its_identity() -> None:
    both = "{preset: f4d8, align: true, equivariance: true, latent_denoising: true}"
    cfg = config.load(
        REPO / "params.yaml", [f"variants={{plain: {{preset: f4d8, align: false}}, reg: {both}}}"]
    )
    reg, plain = variant_identity(cfg, "reg"), variant_identity(cfg, "plain")
    assert set(reg) == {"variants", "align", "equivariance", "latent_denoising"}
    assert reg["equivariance"] == cfg.section("equivariance")
    # as before the options existed, so that a plain variant's saved states still resume
    assert plain == {"variants": {"plain": PLAIN_ENTRY}}
    weighted = config.load(
        REPO / "params.yaml",
        ["variants.plain.equivariance=false", "equivariance.weight=3", "latent_denoising.gamma=1"],
    )
    assert variant_identity(weighted, "plain") == plain


PLAIN_ENTRY = {
    "preset": "f4d8",
    "latent_channels": None,
    "align": False,
    "foundation": None,
    "phases": None,
    "cos_margin": None,
    "distmat_margin": None,
}


def test_the_stage_trains_and_releases_a_regularised_variant(prepared_copy: Path) -> None:
    """Through `ldm train-tokenizer`, both regularisers on, masking too."""
    from typer.testing import CliRunner

    from ldm.cli import app
    from ldm.paths import Paths

    both = "{preset: f4d8, align: false, equivariance: true, latent_denoising: true}"
    sets = ["--set", f"variants={{reg: {both}}}", "--set", "latent_denoising.mask=true"]
    sets += ["--set", "equivariance.share=1.0"]
    result = CliRunner().invoke(app, ["train-tokenizer", "--variant", "reg", *sets])
    assert result.exit_code == 0, result.output + result.stderr
    paths = Paths(prepared_copy)
    assert (paths.tokenizer("reg-0") / "model.safetensors").is_file()
    released = json.loads((paths.tokenizer("reg-0") / "config.json").read_text())
    assert released["regularisers"]["latent_denoising"]["mask"] is True
    assert released["regularisers"]["equivariance"]["share"] == 1.0
    state = checkpoint.latest_state(paths.work("train_tokenizer@reg-0")) / "state.pt"
    identity = json.loads(torch.load(state, weights_only=True)["identity"])
    assert {"equivariance", "latent_denoising"} <= set(identity)
