"""The frozen network evaluation measures in, by its `evaluate.features` name.

A Frechet distance is named after its feature network: only Inception features make a number an
FID. The offline default is the packaged EfficientNet-Lite2, a network nothing trains against
(the tokenizer's perceptual loss and alignment use Lite0), so training cannot game the metric.
"""

from __future__ import annotations

from pathlib import Path

from ldm.pretrained.base import FeatureNet, freeze
from ldm.pretrained.weights import EVALUATE

EVAL_FEATURE_NETS = ("effnet_lite2", "inception", "dinov2_vitl14")


def load_eval_features(
    name: str, weights: Path | None = None, sha256: str | None = None
) -> FeatureNet:
    """The frozen feature network `evaluate.features` names, in eval mode.

    `weights` (`evaluate.features_weights`) and `sha256` (`evaluate.features_sha256`, checked
    when given) serve the file-based networks; the packaged effnet_lite2 ignores them.
    """
    if name == "effnet_lite2":
        from ldm.pretrained.effnet import EffnetLite2Features

        net: FeatureNet = EffnetLite2Features()
    elif name == "inception":
        from ldm.pretrained.inception import load_inception

        net = load_inception(weights, sha256, EVALUATE)
    elif name == "dinov2_vitl14":
        from ldm.pretrained.dinov2 import DinoV2Features, load_dinov2_vit

        net = DinoV2Features(name, load_dinov2_vit(name, weights, sha256, EVALUATE))
    else:
        raise ValueError(f"unknown feature network {name!r}: {' | '.join(EVAL_FEATURE_NETS)}")
    return freeze(net)
