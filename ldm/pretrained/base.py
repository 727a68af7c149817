"""What every frozen network shares, and the three roles they play.

- `FoundationEncoder`: features on the tokenizer's latent grid, the target of alignment.
- `FeatureNet`: one pooled vector per image, the space of Frechet distances and k-NN metrics.
- `PerceptualDistance`: a per-image distance between two batches; gradients reach the first.

All stay in eval mode even when a parent module calls `.train()`: in train mode their
BatchNorms would use batch statistics and overwrite the pretrained running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics for inputs in [0, 1]; DINOv2 was trained on these. VA-VAE's code fed
# DINOv2 raw [-1, 1] pixels by mistake (paper digest §1.2); we normalise properly.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenNet(nn.Module):
    """A pretrained network whose weights and BatchNorm statistics never change."""

    def train(self, mode: bool = True) -> FrozenNet:
        """Stay in eval mode whatever the parent does."""
        return super().train(False)


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients, in place."""
    net.requires_grad_(False)
    return net.eval()


# Images a feature network takes at once on a CPU. A batch of 128 at 260 px has activations of
# gigabytes, allocated afresh for every layer (the page faults cost more than the arithmetic);
# micro-batches keep them small. Per-image outputs are the same (eval mode: no batch
# statistics). bench/feature_throughput.py: effnet_lite2 ran 1.7-1.9x faster at 8 than at 64 or
# 128 on a 2-core CPU, within noise of 4. A GPU takes the batch whole.
CPU_MICRO_BATCH = 8


class FeatureNet(FrozenNet):
    """Images in [-1, 1] (B, 3, H, W) -> pooled features (B, dim). Subclasses define `pooled`."""

    name: str
    dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or len(x) <= CPU_MICRO_BATCH:
            return self.pooled(x)
        return torch.cat([self.pooled(part) for part in x.split(CPU_MICRO_BATCH)])

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The features of one batch, whole."""
        raise NotImplementedError


class PerceptualDistance(FrozenNet):
    """A frozen network's distance between two image batches in [-1, 1], (B,).

    `name` is logged beside its numbers: distances from different networks have different scales
    and must never be compared.
    """

    name: str

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FoundationEncoder(FrozenNet):
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
