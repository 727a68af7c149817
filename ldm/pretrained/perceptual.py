"""Perceptual distances: the tokenizer's loss (`tokenizer.perceptual`) and the perceptual METRIC.

The metric is measured in a network the training never saw: a distance in the very network a
model was trained to please flatters it. LPIPS-VGG when its VGG16 file is given and the loss is
not LPIPS-VGG; otherwise the LPIPS-style distance on the packaged EfficientNet-Lite2, which
nothing trains against (the loss and the offline alignment target are Lite0). The metric's name
says which: `perceptual_lpips_vgg` or `perceptual_effnet_lite2`.
"""

from __future__ import annotations

from pathlib import Path

from ldm.pretrained.base import PerceptualDistance
from ldm.pretrained.weights import WeightsSetting

PERCEPTUAL_LOSSES = ("effnet_lite0", "lpips_vgg", "none")

LOSS_VGG = WeightsSetting(
    "tokenizer.lpips_vgg_weights", None, "tokenizer.perceptual: effnet_lite0 (packaged)"
)
METRIC_VGG = WeightsSetting(
    "tokenizer.lpips_vgg_weights",
    None,
    "tokenizer.lpips_vgg_weights: null (the perceptual metric then uses the packaged "
    "EfficientNet-Lite2)",
)


def build_perceptual(name: str, lpips_vgg_weights: Path | None) -> PerceptualDistance | None:
    """The perceptual loss selected by `tokenizer.perceptual`; None for "none"."""
    if name == "none":
        return None
    if name == "effnet_lite0":
        from ldm.pretrained.effnet import EffnetPerceptual

        return EffnetPerceptual("lite0")
    if name == "lpips_vgg":
        from ldm.pretrained.vgg import load_lpips_vgg

        return load_lpips_vgg(lpips_vgg_weights, LOSS_VGG)
    raise ValueError(f"unknown perceptual loss {name!r}: {' | '.join(PERCEPTUAL_LOSSES)}")


def perceptual_metric_net(training_perceptual: str, lpips_vgg_weights: Path | None) -> str:
    """The network of the perceptual metric for a tokenizer trained with `training_perceptual`."""
    if training_perceptual not in PERCEPTUAL_LOSSES:
        raise ValueError(f"unknown perceptual loss {training_perceptual!r}")
    if lpips_vgg_weights is not None and training_perceptual != "lpips_vgg":
        return "lpips_vgg"
    return "effnet_lite2"


def load_perceptual_metric(
    training_perceptual: str, lpips_vgg_weights: Path | None
) -> PerceptualDistance:
    """The frozen perceptual metric for a tokenizer trained with `training_perceptual`."""
    if perceptual_metric_net(training_perceptual, lpips_vgg_weights) == "lpips_vgg":
        from ldm.pretrained.vgg import load_lpips_vgg

        return load_lpips_vgg(lpips_vgg_weights, METRIC_VGG)
    from ldm.pretrained.effnet import EffnetPerceptual

    return EffnetPerceptual("lite2")
