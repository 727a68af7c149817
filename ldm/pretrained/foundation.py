"""The frozen vision foundation models alignment aligns to, by their `align.foundation` name."""

from __future__ import annotations

from pathlib import Path

from ldm.errors import LdmError
from ldm.pretrained.base import FoundationEncoder, freeze
from ldm.pretrained.dinov2 import DinoV2, load_dinov2_vit
from ldm.pretrained.effnet import effnet_lite0_foundation
from ldm.pretrained.weights import ALIGN

FOUNDATION_MODELS = ("effnet_lite0", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14")


def load_foundation(
    name: str, weights: Path | None = None, sha256: str | None = None
) -> FoundationEncoder:
    """A frozen foundation encoder (eval, requires_grad False) by its `align.foundation` name.

    EfficientNet-Lite0 comes from its pip package and ignores `weights` and `sha256`: they name
    the DINOv2 file, and switching to this fallback must work without editing them.
    """
    if name not in FOUNDATION_MODELS:
        raise LdmError(
            f"unknown align.foundation {name!r}; choose one of {list(FOUNDATION_MODELS)}"
        )
    if name == "effnet_lite0":
        return effnet_lite0_foundation()
    return freeze(DinoV2(name, load_dinov2_vit(name, weights, sha256, ALIGN)))
