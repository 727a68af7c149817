"""VF loss against loop-based formulas, the adaptive weight, foundation loaders and CKA."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldm.errors import WeightsMissing
from ldm.pretrained import base, dinov2
from ldm.pretrained.foundation import load_foundation
from ldm.pretrained.weights import sha256_of
from ldm.tokenizer.align import (
    VFProjection,
    adaptive_vf_weight,
    cka_from_covariance,
    marginal_cosine_loss,
    marginal_distance_matrix_loss,
    vf_loss,
)
from tests.conftest import TINY_VIT, official_dinov2_state

torch.set_num_threads(1)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(p * q for p, q in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(p * p for p in a)) * math.sqrt(sum(q * q for q in b)))


def _vectors(t: torch.Tensor, b: int) -> list[list[float]]:
    """Channel vectors of image b, positions in row-major order."""
    _, c, h, w = t.shape
    return [[t[b, k, i, j].item() for k in range(c)] for i in range(h) for j in range(w)]


def _loop_mcos(z: torch.Tensor, f: torch.Tensor, m: float) -> float:
    total, count = 0.0, 0
    for b in range(z.shape[0]):
        for zv, fv in zip(_vectors(z, b), _vectors(f, b), strict=True):
            total += max(0.0, 1 - m - _cos(zv, fv))
            count += 1
    return total / count


def _loop_mdms(z: torch.Tensor, f: torch.Tensor, m: float) -> float:
    total, count = 0.0, 0
    for b in range(z.shape[0]):
        zs, fs = _vectors(z, b), _vectors(f, b)
        for i in range(len(zs)):
            for j in range(len(zs)):
                total += max(0.0, abs(_cos(zs[i], zs[j]) - _cos(fs[i], fs[j])) - m)
                count += 1
    return total / count


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)


@pytest.mark.parametrize("margin", [0.0, 0.25, 0.5])
def test_vf_terms_match_loop_formulas(pair, margin: float) -> None:
    z, f = pair
    assert marginal_cosine_loss(z, f, margin).item() == pytest.approx(
        _loop_mcos(z, f, margin), abs=1e-6
    )
    assert marginal_distance_matrix_loss(z, f, margin).item() == pytest.approx(
        _loop_mdms(z, f, margin), abs=1e-6
    )


def test_vf_terms_zero_when_margin_covers_gap(pair) -> None:
    z, f = pair
    min_cos = F.cosine_similarity(z, f, dim=1).min().item()
    assert marginal_cosine_loss(z, f, 1 - min_cos + 1e-6).item() == 0.0
    assert marginal_cosine_loss(z, f, 1 - min_cos - 0.05).item() > 0.0
    zn, fn = F.normalize(z.flatten(2), dim=1), F.normalize(f.flatten(2), dim=1)
    gap = (zn.transpose(1, 2) @ zn - fn.transpose(1, 2) @ fn).abs().max().item()
    assert marginal_distance_matrix_loss(z, f, gap + 1e-6).item() == 0.0
    assert marginal_distance_matrix_loss(z, f, gap - 0.05).item() > 0.0
    # identical maps: cos = 1 and equal Gram matrices, so both vanish already at margin 0
    total, parts = vf_loss(z, z.clone(), 0.0, 0.0, 1.0, 1.0)
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    assert parts["vf_mcos"] == pytest.approx(0.0, abs=1e-6)
    assert parts["vf_mdms"] == pytest.approx(0.0, abs=1e-6)


def test_vf_loss_combines_weighted_parts_and_grads_reach_z(pair) -> None:
    z, f = pair
    z.requires_grad_(True)
    total, parts = vf_loss(z, f, 0.5, 0.25, 2.0, 3.0)
    expect = 2.0 * _loop_mcos(z.detach(), f, 0.5) + 3.0 * _loop_mdms(z.detach(), f, 0.25)
    assert total.item() == pytest.approx(expect, abs=1e-5)
    assert parts["vf"] == pytest.approx(total.item())
    assert set(parts) == {"vf_mcos", "vf_mdms", "vf"}
    total.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_vf_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="equal"):
        marginal_cosine_loss(torch.randn(1, 4, 2, 2), torch.randn(1, 8, 2, 2), 0.0)


def test_projection_is_bias_free_1x1() -> None:
    proj = VFProjection(4, 16)
    assert proj.proj.bias is None and proj.proj.kernel_size == (1, 1)
    assert proj(torch.randn(2, 4, 3, 5)).shape == (2, 16, 3, 5)


def test_adaptive_weight_is_grad_norm_ratio_on_encoder_last_layer() -> None:
    torch.manual_seed(0)
    enc_first, enc_last = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
    dec, proj = nn.Conv2d(4, 3, 3, padding=1), VFProjection(4, 6)
    x, feats = torch.randn(2, 3, 4, 4), torch.randn(2, 6, 4, 4)
    z = enc_last(torch.relu(enc_first(x)))  # (B, 4, 4, 4) latent
    rec = (dec(z) - x).abs().mean()
    vf, _ = vf_loss(proj(z), feats, 0.0, 0.0, 1.0, 1.0)

    g_rec = torch.autograd.grad(rec, enc_last.weight, retain_graph=True)[0]
    g_vf = torch.autograd.grad(vf, enc_last.weight, retain_graph=True)[0]
    by_hand = g_rec.norm() / (g_vf.norm() + 1e-4)
    w = adaptive_vf_weight(rec, vf, enc_last.weight, max_value=1e8)
    assert w.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert not w.requires_grad and w.grad_fn is None
    # another layer gives another ratio, so the layer passed in is the one used
    other = adaptive_vf_weight(rec, vf, enc_first.weight, max_value=1e8)
    assert other.item() != pytest.approx(w.item(), rel=1e-3)
    clamped = adaptive_vf_weight(rec, vf, enc_last.weight, max_value=by_hand.item() / 2)
    assert clamped.item() == pytest.approx(by_hand.item() / 2)


# -- foundation models ------------------------------------------------------------------------


@pytest.fixture
def tiny_dinov2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    monkeypatch.setitem(dinov2._VIT_SIZES, "dinov2_vits14", ("vit_small_patch14_dinov2", TINY_VIT))
    state = official_dinov2_state(TINY_VIT["embed_dim"], TINY_VIT["depth"])
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path, state


def test_dinov2_loads_official_layout_onto_latent_grid(tiny_dinov2) -> None:
    path, state = tiny_dinov2
    enc = load_foundation("dinov2_vits14", path, sha256_of(path))
    assert enc.name == "dinov2_vits14" and enc.feature_dim == TINY_VIT["embed_dim"]
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    loaded = enc.vit.state_dict()
    assert set(loaded) == set(state) - {"mask_token"}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    enc.train()  # a parent's .train() must not switch the frozen encoder out of eval
    assert not enc.training

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for h in (4, 8):
        assert enc(x, (h, h)).shape == (2, TINY_VIT["embed_dim"], h, h)
    # input is ImageNet-normalised (not raw [-1, 1] as in VA-VAE's code) and CLS is dropped
    x01 = F.interpolate((x + 1) / 2, size=(56, 56), mode="bilinear", antialias=True)
    mean = torch.tensor(base.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(base.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = enc.vit.forward_features((x01 - mean) / std)[:, 1:]  # (B, 16, D)
    expect = tokens.transpose(1, 2).reshape(2, -1, 4, 4)
    torch.testing.assert_close(enc(x, (4, 4)), expect)


def test_dinov2_wrong_hash_names_both_hashes_and_fallback(tiny_dinov2) -> None:
    path, _ = tiny_dinov2
    with pytest.raises(WeightsMissing) as err:
        load_foundation("dinov2_vits14", path, "0" * 64)
    msg = str(err.value)
    assert "0" * 64 in msg and sha256_of(path) in msg
    assert "align.foundation_sha256" in msg and "align.foundation: effnet_lite0" in msg


@pytest.mark.parametrize("weights", [None, Path("/nonexistent/dinov2_vitl14_pretrain.pth")])
def test_missing_dinov2_weights_name_file_setting_and_fallback(weights: Path | None) -> None:
    with pytest.raises(WeightsMissing) as err:
        load_foundation("dinov2_vitl14", weights, None)
    msg = str(err.value)
    assert "dinov2_vitl14_pretrain.pth" in msg and "align.foundation_weights" in msg
    assert "align.foundation: effnet_lite0" in msg and "offline" in msg


def test_effnet_lite0_loads_offline_onto_latent_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("effnet_lite0 must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    # the DINOv2 settings left in place must not block the offline fallback
    enc = load_foundation("effnet_lite0", Path("/nonexistent/dinov2_vitl14_pretrain.pth"), "0" * 64)
    assert enc.feature_dim == 112 and not enc.training
    assert not any(p.requires_grad for p in enc.parameters())
    x = (torch.rand(1, 3, 24, 40) * 2 - 1).requires_grad_(True)
    f = enc(x, (2, 3))
    assert f.shape == (1, 112, 2, 3) and not f.requires_grad
    assert torch.isfinite(f).all() and f.abs().sum() > 0
    # TF's (pixel - 127) / 128 on 0..255, which the Lite checkpoints were trained on
    pixels = torch.tensor([0.0, 127.0, 255.0]).view(1, 3, 1, 1)
    normalised = (pixels / 255 - enc.mean) / enc.std
    torch.testing.assert_close(normalised, (pixels - 127) / 128)


# -- CKA ------------------------------------------------------------------------------------


def rows_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA straight from its definition on the centred rows (N, D1) and (N, D2)."""
    x, y = (v.double() - v.double().mean(0) for v in (x, y))
    norm = torch.linalg.matrix_norm
    return (norm(y.T @ x) ** 2 / (norm(x.T @ x) * norm(y.T @ y))).item()


def joint_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two row sets through their joint covariance, as evaluation computes it."""
    return cka_from_covariance(torch.cov(torch.cat([x, y], dim=1).double().T), x.shape[1])


def test_cka_properties() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 6, generator=g)
    assert joint_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))  # orthogonal
    y = torch.randn(500, 4, generator=g) + x[:, :4]
    assert joint_cka(x, 3.0 * y) == pytest.approx(joint_cka(x, y))
    assert joint_cka(x @ q * 0.1, y) == pytest.approx(joint_cka(x, y))
    a, b = torch.randn(20000, 8, generator=g), torch.randn(20000, 8, generator=g)
    assert joint_cka(a, b) < 0.01


def test_cka_from_the_joint_covariance_is_linear_cka_of_the_rows() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(400, 3, generator=g) + 5.0
    y = torch.cat([x @ torch.randn(3, 5, generator=g), torch.randn(400, 2, generator=g)], dim=1)
    joint = torch.cat([x, y], dim=1).double()
    cov = torch.cov(joint.T)  # (8, 8)
    assert cka_from_covariance(cov, 3) == pytest.approx(rows_cka(x, y), rel=1e-9)
    assert cka_from_covariance(torch.zeros(8, 8), 3) == 0.0
