"""pytorch-fid's FID Inception-v3 (pool3, 2048-d) from a local weights file: standard FID."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from unittest import mock

import torch

from ldm.errors import LdmError
from ldm.pretrained.base import FeatureNet
from ldm.pretrained.weights import WeightsSetting, check_sha256, require_file

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


class InceptionFeatures(FeatureNet):
    """pytorch-fid's InceptionV3 at its own input handling (bilinear to 299 px), pool3 output."""

    name, dim = "inception", 2048

    def __init__(self, weights: Path) -> None:
        super().__init__()
        from pytorch_fid import inception

        state = torch.load(weights, map_location="cpu", weights_only=True)
        # pytorch-fid always fetches its weights by URL; hand it the local file instead.
        with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: state):
            self.net = inception.InceptionV3([3], resize_input=True, normalize_input=True)
        self.net.eval().requires_grad_(False)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x + 1.0) / 2.0)[0].flatten(1)  # it takes [0, 1]; (B, 2048)


def load_inception(
    weights: Path | None, sha256: str | None, setting: WeightsSetting
) -> InceptionFeatures:
    """FID Inception from the local file `setting` points to; pytorch-fid must be installed."""
    if importlib.util.find_spec("pytorch_fid") is None:
        raise LdmError(
            f"evaluate.features: inception uses pytorch-fid's FID Inception, and that package "
            f"is not installed. Run `pip install pytorch-fid`, put its weights file "
            f"{WEIGHTS_FILE} on this machine and set {setting.weights} to its path; or set "
            f"{setting.fallback}."
        )
    path = require_file(
        weights,
        f"inception needs pytorch-fid's weights file {WEIGHTS_FILE}",
        "Download it from pytorch-fid's release (FID_WEIGHTS_URL in pytorch_fid/inception.py)",
        setting,
    )
    check_sha256(path, sha256, setting)
    return InceptionFeatures(path)
