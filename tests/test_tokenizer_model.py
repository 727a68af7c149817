"""The KL autoencoder: shapes per preset, a short overfit, latent statistics applied once, KL,
input checks and the attention block against the textbook formula."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.tokenizer.model import (
    PRESETS,
    AttnBlock,
    DiagonalGaussian,
    Tokenizer,
    TokenizerArch,
    arch_from_preset,
    num_groups,
)


def gradients(n: int, side: int) -> torch.Tensor:
    """n smooth colour ramps in [-1, 1], (n, 3, side, side)."""
    ramp = torch.linspace(-1.0, 1.0, side)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")  # (side, side)
    imgs = []
    for i in range(n):
        a = 2 * math.pi * i / n
        base = math.cos(a) * xx + math.sin(a) * yy  # (side, side)
        imgs.append(torch.stack([base, -base, 0.5 * base + 0.3 * xx * yy]))
    return torch.stack(imgs).clamp(-1, 1)  # (n, 3, side, side)


@pytest.fixture
def small() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(arch_from_preset("f4d8", 32)).eval()


def test_presets_and_arch_round_trip() -> None:
    assert set(PRESETS) == {"f4d8", "f16d16", "f16d32", "f16d64"}
    arch = arch_from_preset("f16d32", 256)
    assert arch.downsample == 16 and arch.latent_channels == 32
    assert TokenizerArch.from_dict(arch.to_dict()) == arch
    assert arch.to_dict()["ch_mult"] == [1, 1, 2, 2, 4]
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        arch_from_preset("f8d4", 256)


@pytest.mark.parametrize("name", ["f16d16", "f16d32", "f16d64"])
def test_f16_shapes_on_meta(name: str) -> None:
    with torch.device("meta"):
        tok = Tokenizer(arch_from_preset(name, 256))
        x = torch.empty(2, 3, 256, 256)
        z = tok.encode(x)
        recon, q, z_raw = tok(x)
    d = PRESETS[name]["latent_channels"]
    assert tok.arch.downsample == 16
    assert tok.latent_shape == (d, 16, 16)
    assert z.shape == z_raw.shape == (2, d, 16, 16)
    assert q.kl().shape == (2,)
    assert tok.decode(z).shape == recon.shape == (2, 3, 256, 256)
    # Attention sits only where the feature map is 16 wide: the last level (+ mid blocks).
    assert [len(level.attn) for level in tok.encoder.down] == [0, 0, 0, 0, 2]
    assert [len(level.attn) for level in tok.decoder.up] == [0, 0, 0, 0, 3]
    assert tok.encoder.conv_out.out_channels == 2 * d
    assert tok.decoder.conv_out.out_channels == 3


def test_f4d8_real_forward(small: Tokenizer) -> None:
    x = gradients(2, 32)
    with torch.no_grad():
        z = small.encode(x)
        recon, q, z_raw = small(x, generator=torch.Generator().manual_seed(0))
        out = small.decode(z)
    assert small.latent_shape == (8, 8, 8)
    assert z.shape == z_raw.shape == (2, 8, 8, 8)
    assert recon.shape == out.shape == (2, 3, 32, 32)
    assert q.mean.shape == q.logvar.shape == (2, 8, 8, 8)


def test_overfit_one_batch() -> None:
    torch.manual_seed(0)
    tok = Tokenizer(arch_from_preset("f4d8", 32))
    x = gradients(4, 32)
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        recon, _, _ = tok(x, sample=False)
        loss = (recon - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = (tok(x, sample=False)[0] - x).abs().mean().item()
    assert final < losses[0] / 3, (losses[0], final)


def test_latent_stats_applied_once(small: Tokenizer) -> None:
    x = gradients(2, 32)
    mean = torch.linspace(-0.5, 0.5, 8)
    std = torch.linspace(0.5, 2.0, 8)
    small.set_latent_stats(mean, std)
    with torch.no_grad():
        raw = small.posterior(x).mode()  # (2, 8, 8, 8)
        z = small.encode(x)
        torch.testing.assert_close(z, (raw - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
        torch.testing.assert_close(small.decode(z), small.decode_raw(raw), atol=1e-5, rtol=1e-4)
    assert "latent_mean" in small.state_dict() and "latent_std" in small.state_dict()
    with pytest.raises(ValueError, match="positive"):
        small.set_latent_stats(mean, torch.zeros(8))
    with pytest.raises(ValueError, match="shape"):
        small.set_latent_stats(torch.zeros(4), torch.ones(4))


def test_kl_and_sampling() -> None:
    zero = DiagonalGaussian(torch.zeros(3, 8, 4, 4))
    torch.testing.assert_close(zero.kl(), torch.zeros(3))
    moments = torch.randn(3, 8, 4, 4)
    assert (DiagonalGaussian(moments).kl() > 0).all()
    # Clamped log-variance keeps exp() finite.
    wild = DiagonalGaussian(torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 1e4)], 1))
    assert torch.isfinite(wild.kl()).all()
    q = DiagonalGaussian(moments)
    a, b = (q.sample(torch.Generator().manual_seed(1)) for _ in range(2))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(q.mode(), moments[:, :4])


def test_wrong_input_raises(small: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"needs 32x32"):
        small.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"needs 32x32"):
        small.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        small.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 8, 8, 8\)"):
        small.decode(torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        Tokenizer(arch_from_preset("f16d16", 72))


def test_attention_matches_explicit_formula() -> None:
    torch.manual_seed(0)
    block = AttnBlock(64, 4).eval()
    x = torch.randn(2, 64, 6, 5)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = (p(h).flatten(2) for p in (block.q, block.k, block.v))  # (B, C, HW)
        w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(64), dim=-1)  # (B, HW, HW)
        out = (v @ w.transpose(1, 2)).reshape(x.shape)  # (B, C, H, W)
        expected = x + block.proj_out(out)
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-4)


def test_group_norm_groups() -> None:
    assert num_groups(128, 4) == 32 and num_groups(512, 4) == 32  # LDM's groups on LDM's widths
    assert num_groups(32, 4) == 8 and num_groups(64, 4) == 16 and num_groups(24, 4) == 6
    assert num_groups(3, 4) == 1
    # The layout of tokenizers saved before min_group_channels: one channel per group if need be.
    assert num_groups(32, 1) == 32 and num_groups(24, 1) == 24 and num_groups(48, 1) == 24
    # A layer narrower than 32 channels still builds and runs.
    arch = TokenizerArch(
        ch=12,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        latent_channels=4,
        resolution=16,
    )
    tok = Tokenizer(arch)
    assert tok.encoder.conv_in.out_channels == 12
    with torch.no_grad():
        assert tok.decode(tok.encode(torch.zeros(1, 3, 16, 16))).shape == (1, 3, 16, 16)


def test_narrow_layers_keep_each_images_colour_through_group_norm() -> None:
    """A per-channel offset (an image's overall colour) survives the decoder's last norm."""
    x = torch.randn(2, 32, 8, 8)
    colour = torch.linspace(-1, 1, 32).view(1, 32, 1, 1)  # differs between channels of a group
    grouped = Tokenizer(arch_from_preset("f4d8", 32)).decoder.norm_out
    one_channel_groups = torch.nn.GroupNorm(32, 32, eps=1e-6)
    assert grouped.num_groups == 8
    assert not torch.allclose(grouped(x + colour), grouped(x), atol=1e-3)
    # An instance norm (what 32 groups on 32 channels are) erases it entirely.
    torch.testing.assert_close(one_channel_groups(x + colour), one_channel_groups(x))


def test_a_tokenizer_saved_before_min_group_channels_keeps_its_groups() -> None:
    saved = arch_from_preset("f4d8", 32).to_dict()
    del saved["min_group_channels"]
    old = Tokenizer(TokenizerArch.from_dict(saved))
    assert old.arch.min_group_channels == 1 and old.decoder.norm_out.num_groups == 32
    assert TokenizerArch.from_dict(arch_from_preset("f4d8", 32).to_dict()).min_group_channels == 4
