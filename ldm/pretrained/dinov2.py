"""DINOv2 ViT/14 from an official `<name>_pretrain.pth` file, mapped onto timm's ViT.

One loader serves both uses, so alignment and evaluation read the same file the same way:
- `DinoV2`: patch tokens on the tokenizer's latent grid, the alignment target (paper §3).
- `DinoV2Features`: the CLS token at 224 px, the space of FD_DINOv2 (Stein et al. 2023, as
  their dgm-eval computes it: bicubic resize to 224 x 224, ImageNet normalisation, the official
  model's output, which is the CLS token after the final norm). The CLS token, not a mean of patch
  tokens, so the number is comparable with published FD_DINOv2 values.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldm.pretrained.base import IMAGENET_MEAN, IMAGENET_STD, FeatureNet, FoundationEncoder, freeze
from ldm.pretrained.weights import WeightsSetting, check_sha256, require_file

# name -> (timm architecture, overrides). Hidden so tests can swap in a tiny variant.
_VIT_SIZES: dict[str, tuple[str, dict[str, int]]] = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", {}),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", {}),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", {}),
}
_DINOV2_GRID = 37  # official checkpoints carry a 37 x 37 position grid (518 px / 14)
PATCH = 14
EVAL_SIZE = 224  # FD_DINOv2's input side


def load_dinov2_vit(
    name: str, weights: Path | None, sha256: str | None, setting: WeightsSetting
) -> nn.Module:
    """The frozen timm ViT of DINOv2 `name`, from the local file `setting` points to."""
    expected = f"{name}_pretrain.pth"
    path = require_file(
        weights,
        f"{name} needs the official DINOv2 checkpoint {expected}",
        f"Download {expected} from the DINOv2 release",
        setting,
    )
    check_sha256(path, sha256, setting)
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    arch, overrides = _VIT_SIZES[name]
    # Built at the checkpoint's own 518 px (37 x 37) so its position table loads unchanged;
    # dynamic_img_size interpolates it to each requested 14·h x 14·w input at run time.
    vit = timm.create_model(
        arch,
        pretrained=False,
        num_classes=0,
        dynamic_img_size=True,
        img_size=PATCH * _DINOV2_GRID,
        **overrides,
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    # timm's filter recognises the official layout by `mask_token`, drops it and keeps the rest
    # (cls_token, pos_embed, blocks.N.ls1.gamma, ... already match timm's names).
    vit.load_state_dict(checkpoint_filter_fn(state, vit))
    return freeze(vit)


class DinoV2(FoundationEncoder):
    """DINOv2 ViT/14 (timm architecture); last layer's patch tokens after the final norm."""

    def __init__(self, name: str, vit: nn.Module) -> None:
        super().__init__(name, vit.embed_dim, PATCH, IMAGENET_MEAN, IMAGENET_STD)
        self.vit = vit

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens reshaped to the patch grid; CLS and register tokens dropped."""
        b, _, hp, wp = x.shape
        tokens = self.vit.forward_features(x)  # (B, P + h·w, D), P prefix tokens
        patches = tokens[:, self.vit.num_prefix_tokens :]  # (B, h·w, D)
        h, w = hp // PATCH, wp // PATCH
        return patches.transpose(1, 2).reshape(b, -1, h, w)  # (B, D, h, w)


class DinoV2Features(FeatureNet):
    """DINOv2's CLS token after the final norm, at 224 px: the FD_DINOv2 feature space."""

    def __init__(self, name: str, vit: nn.Module) -> None:
        super().__init__()
        self.name, self.dim, self.vit = name, vit.embed_dim, vit
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() + 1.0) / 2.0  # (B, 3, H, W) in [0, 1]
        size = (EVAL_SIZE, EVAL_SIZE)
        # antialiased bicubic, clamped, as PIL's BICUBIC resize of a saved image gives
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        x = (x.clamp(0.0, 1.0) - self.mean) / self.std
        return self.vit.forward_features(x)[:, 0]  # (B, D), the CLS token
