"""LightningDiT and the flow objective: invariants, sizes, switches, and that it learns."""

from __future__ import annotations

import json

import pytest
import torch

from ldm.diffusion import SIZES, create_model
from ldm.diffusion.flow import flow_loss, interpolate, sample_t, velocity_target
from ldm.diffusion.layers import apply_rope, rope_table


def tiny(**kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("T/2", 4, 8, kwargs.pop("num_classes", 10), **kwargs)


def unzero(model: torch.nn.Module) -> torch.nn.Module:
    """Randomise the zero-initialised layers, so the blocks matter and receive gradients."""
    for name, param in model.named_parameters():
        if "adaLN_modulation" in name or "final_layer.linear" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def batch(n: int = 4, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, 4, 8, 8, generator=g),
        torch.rand(n, generator=g),
        torch.arange(n) % classes,
    )


def test_zero_initialised_model_outputs_exactly_zero() -> None:
    x, t, y = batch()
    assert torch.equal(tiny()(x, t, y), torch.zeros_like(x))


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_size_gives_velocity_of_latent_shape(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, 32, 16, 1000)
        x = torch.empty(2, 32, 16, 16)
        out = model(x, torch.empty(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == x.shape
    assert model.grid * model.patch == 16 and model.pos_embed.shape[1] == model.grid**2


def test_xl1_has_the_reference_parameter_count() -> None:
    with torch.device("meta"):
        model = create_model("XL/1", 32, 16, 1000)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(675.26e6, rel=1e-3)


def test_config_is_json_and_rebuilds_the_model() -> None:
    model = tiny(qk_norm=True, class_dropout=0.2)
    config = json.loads(json.dumps(model.config))
    rebuilt = create_model(**config)
    assert rebuilt.config == model.config
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    "switch",
    [
        dict(swiglu=False),
        dict(rmsnorm=False),
        dict(rope=False),
        dict(qk_norm=True),
        dict(class_dropout=0.0),
        dict(swiglu=False, rmsnorm=False, rope=False, qk_norm=True),
    ],
)
def test_each_switch_can_flip_and_the_model_still_trains(switch: dict) -> None:
    model = unzero(tiny(**switch))
    x, t, y = batch()
    out = model(x, t, y)
    out.square().mean().backward()
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_unknown_size_and_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="unknown model size"):
        create_model("XXL/2", 4, 8, 10)
    with pytest.raises(ValueError, match="multiple of patch"):
        create_model("T/2", 4, 7, 10)
    with pytest.raises(ValueError, match="needs labels"):
        tiny()(*batch()[:2])


def test_rope_preserves_norms_and_depends_only_on_relative_position() -> None:
    grid, head_dim = 4, 16
    table = rope_table(head_dim, grid)
    q, k = torch.randn(2, head_dim)
    q_rot = apply_rope(q.expand(grid * grid, -1), table)  # (T, K): the same q at every token
    k_rot = apply_rope(k.expand(grid * grid, -1), table)
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm().expand(grid * grid))
    scores = q_rot @ k_rot.T  # (T, T)

    def at(row: int, col: int) -> int:
        return row * grid + col

    # The same 2D offset (+1 row, +2 cols) at two places gives the same score; another does not.
    torch.testing.assert_close(scores[at(0, 0), at(1, 2)], scores[at(2, 1), at(3, 3)])
    assert not torch.allclose(scores[at(0, 0), at(1, 2)], scores[at(0, 0), at(2, 1)])


def test_rope_real_form_for_torch_compile_matches_the_complex_form(monkeypatch) -> None:
    table, x = rope_table(16, 4), torch.randn(2, 3, 16, 16)  # (T, K/2, 2), (B, H, T, K)
    eager = apply_rope(x, table)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.testing.assert_close(apply_rope(x, table), eager)


def test_unconditional_model_has_no_label_path_and_trains() -> None:
    model = tiny(num_classes=0)
    assert model.y_embedder is None
    x0, t, _ = batch()
    noise = torch.randn_like(x0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss, per_sample = flow_loss(model(interpolate(x0, noise, t), t, None), x0 - noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert per_sample.shape == (4,) and losses[-1] < losses[0]


def test_single_class_model_runs() -> None:
    x, t, _ = batch()
    assert tiny(num_classes=1)(x, t, torch.zeros(4, dtype=torch.long)).shape == x.shape


def test_interpolant_derivative_is_the_velocity_target() -> None:
    x0, t, _ = batch()
    noise = torch.randn_like(x0)
    _, dxt_dt = torch.autograd.functional.jvp(
        lambda t: interpolate(x0, noise, t), t, torch.ones_like(t)
    )
    torch.testing.assert_close(dxt_dt, velocity_target(x0, noise))
    torch.testing.assert_close(interpolate(x0, noise, torch.zeros(4)), x0)
    torch.testing.assert_close(interpolate(x0, noise, torch.ones(4)), noise)


def test_sample_t_ranges_and_seed() -> None:
    for kind in ("uniform", "logit_normal"):
        t = sample_t(1000, kind, torch.Generator().manual_seed(0))
        assert t.shape == (1000,) and t.min() >= 0 and t.max() <= 1
        assert torch.equal(t, sample_t(1000, kind, torch.Generator().manual_seed(0)))
    # logit-normal(0, 1) puts more mass mid-way than uniform does
    assert (sample_t(4000, "logit_normal").sub(0.5).abs() < 0.25).float().mean() > 0.6
    with pytest.raises(ValueError):
        sample_t(4, "cosine")


def test_flow_loss_terms() -> None:
    target = torch.randn(3, 4, 8, 8)
    loss, per_sample = flow_loss(target, target, cos_weight=1.0)
    assert loss.abs() < 1e-6 and per_sample.shape == (3,)
    # -target: direction term is 2 per position, MSE is 4·mean(target²)
    _, per_sample = flow_loss(-target, target, cos_weight=0.5)
    expected = 4 * target.square().flatten(1).mean(1) + 0.5 * 2
    torch.testing.assert_close(per_sample, expected)


def test_overfitting_one_batch_drives_the_loss_down() -> None:
    model = tiny(num_classes=4, class_dropout=0.0)
    x0, _, y = batch(4, classes=4)
    g = torch.Generator().manual_seed(2)
    noise, t = torch.randn(x0.shape, generator=g), sample_t(4, "logit_normal", g)
    x_t, target = interpolate(x0, noise, t), velocity_target(x0, noise)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(100):
        loss, _ = flow_loss(model(x_t, t, y), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
