"""The frozen vision foundation models alignment aligns to, by their `align.foundation` name."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from ldm.errors import LdmError
from ldm.pretrained.base import FoundationEncoder, freeze
from ldm.pretrained.dinov2 import DinoV2, load_dinov2_vit
from ldm.pretrained.effnet import effnet_lite0_foundation
from ldm.pretrained.weights import ALIGN


def _build_effnet_lite0(weights: Path | None, sha256: str | None) -> FoundationEncoder:
    """EfficientNet-Lite0 from the pip-packaged checkpoint.

    `weights` and `sha256` are ignored: they name the DINOv2 file, and switching to this
    fallback must work without editing them.
    """
    return effnet_lite0_foundation()


def _build_dinov2(name: str, weights: Path | None, sha256: str | None) -> FoundationEncoder:
    return freeze(DinoV2(name, load_dinov2_vit(name, weights, sha256, ALIGN)))


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
