"""LPIPS v0.1 with VGG16: the lpips package's linear heads, VGG16 from a local torchvision file."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ldm.errors import LdmError
from ldm.pretrained.base import PerceptualDistance, freeze
from ldm.pretrained.weights import WeightsSetting, require_file


class LpipsVgg(PerceptualDistance):
    """LPIPS-VGG distance; gradients reach the first argument."""

    name = "lpips_vgg"

    def __init__(self, vgg_weights: Path, setting: WeightsSetting) -> None:
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
                        f"features.{idx}.weight); fix {setting.weights} or set "
                        f"{setting.fallback}."
                    )
                layer.load_state_dict({p: state[k] for p, k in keys.items()})
        freeze(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lpips(x, y).flatten()  # (B, 1, 1, 1) -> (B,)


def load_lpips_vgg(weights: Path | None, setting: WeightsSetting) -> LpipsVgg:
    """LPIPS-VGG with VGG16 from the local file `setting` points to."""
    path = require_file(
        weights,
        "LPIPS-VGG needs torchvision's VGG16 weights vgg16-397923af.pth (torchvision.models."
        "vgg16's IMAGENET1K_V1 state dict) as a local file",
        "Put that file on this machine",
        setting,
    )
    return LpipsVgg(path, setting)
