"""Frozen pretrained networks: DINOv2 evaluation features from a local file, their checks, and the
perceptual metric that is never measured in the network the training used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ldm.errors import WeightsMissing
from ldm.pretrained import dinov2
from ldm.pretrained.base import IMAGENET_MEAN, IMAGENET_STD
from ldm.pretrained.effnet import load_effnet_lite, stage_ends
from ldm.pretrained.features import load_eval_features
from ldm.pretrained.foundation import load_foundation
from ldm.pretrained.perceptual import (
    PERCEPTUAL_LOSSES,
    load_perceptual_metric,
    perceptual_metric_net,
)
from ldm.pretrained.weights import sha256_of
from tests.conftest import TINY_VIT, official_dinov2_state

torch.set_num_threads(1)


@pytest.fixture
def tiny_dinov2_vitl14(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local dinov2_vitl14 checkpoint file, written by a tiny ViT under the official layout."""
    tiny = ("vit_large_patch14_dinov2", TINY_VIT)
    monkeypatch.setitem(dinov2._VIT_SIZES, "dinov2_vitl14", tiny)
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save(official_dinov2_state(TINY_VIT["embed_dim"], TINY_VIT["depth"]), path)
    return path


def test_dinov2_eval_features_are_the_cls_token_at_224_px(tiny_dinov2_vitl14: Path) -> None:
    path = tiny_dinov2_vitl14
    net = load_eval_features("dinov2_vitl14", path, sha256_of(path))
    assert net.name == "dinov2_vitl14" and net.dim == TINY_VIT["embed_dim"]
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    # the very weights alignment loads from the same file
    aligned = load_foundation("dinov2_vitl14", path, None)
    for key, value in aligned.vit.state_dict().items():
        assert torch.equal(value, net.vit.state_dict()[key]), key

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        features = net(x)
        x224 = F.interpolate((x + 1) / 2, size=(224, 224), mode="bicubic", antialias=True)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        tokens = net.vit.forward_features((x224.clamp(0, 1) - mean) / std)  # (B, 1 + 256, D)
    assert tokens.shape[1] == 1 + 16 * 16
    assert features.shape == (2, TINY_VIT["embed_dim"])
    # timm's own pooling for DINOv2 is the CLS token: the official model's output
    torch.testing.assert_close(features, net.vit.forward_head(tokens, pre_logits=True))
    assert not torch.allclose(features, tokens[:, 1:].mean(dim=1))


def test_dinov2_eval_features_refuse_a_wrong_sha256(tiny_dinov2_vitl14: Path) -> None:
    path = tiny_dinov2_vitl14
    with pytest.raises(WeightsMissing) as err:
        load_eval_features("dinov2_vitl14", path, "f" * 64)
    message = str(err.value)
    assert "f" * 64 in message and sha256_of(path) in message
    assert "evaluate.features_sha256" in message and "evaluate.features: effnet_lite2" in message


@pytest.mark.parametrize("training", PERCEPTUAL_LOSSES)
@pytest.mark.parametrize("vgg", [None, Path("vgg16-397923af.pth")])
def test_perceptual_metric_never_uses_the_training_network(training: str, vgg: Path | None) -> None:
    metric = perceptual_metric_net(training, vgg)
    assert metric != training
    # LPIPS-VGG whenever its file is given and the training did not use it; else Lite2
    expected = "lpips_vgg" if vgg is not None and training != "lpips_vgg" else "effnet_lite2"
    assert metric == expected


def test_perceptual_metric_loads_lite2_by_default_and_names_it() -> None:
    metric = load_perceptual_metric("effnet_lite0", None)
    assert metric.name == "effnet_lite2"
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(metric(y, y), torch.zeros(2))
        near, far = (metric((y + s * noise).clamp(-1, 1), y).mean() for s in (0.05, 0.3))
    assert 0 < near < far


def test_perceptual_metric_with_a_missing_vgg_file_says_how_to_fall_back(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing) as err:
        load_perceptual_metric("effnet_lite0", tmp_path / "vgg16.pth")
    message = str(err.value)
    assert "tokenizer.lpips_vgg_weights" in message and "EfficientNet-Lite2" in message


def test_perceptual_stages_end_where_the_stride_first_changes() -> None:
    assert stage_ends(load_effnet_lite("lite0"), (2, 4, 8, 16)) == (0, 2, 4, 7)
    assert stage_ends(load_effnet_lite("lite2"), (2, 4, 8, 16)) == (0, 3, 6, 10)
