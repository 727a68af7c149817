"""Local weight files: present, and the expected bytes when a sha256 is configured.

Nothing is downloaded at run time, so every message names the file, the setting that points at
it, and the setting that selects a packaged network instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ldm.errors import WeightsMissing


@dataclass(frozen=True)
class WeightsSetting:
    """The settings behind one weights file, as a message to the user names them."""

    weights: str  # the path setting, e.g. "align.foundation_weights"
    sha256: str | None  # the hash setting, if there is one
    fallback: str  # what to set instead to need no file, with why that works


ALIGN = WeightsSetting(
    "align.foundation_weights",
    "align.foundation_sha256",
    "align.foundation: effnet_lite0 (packaged, works offline)",
)
EVALUATE = WeightsSetting(
    "evaluate.features_weights",
    "evaluate.features_sha256",
    "evaluate.features: effnet_lite2 (packaged, works offline)",
)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def require_file(weights: Path | None, needs: str, obtain: str, setting: WeightsSetting) -> Path:
    """`weights` as a Path when it is a file; else WeightsMissing saying what to do.

    `needs` opens the message ("dinov2_vitl14 needs ..."), `obtain` says where to get the file.
    """
    if weights is not None and Path(weights).is_file():
        return Path(weights)
    where = (
        "is not set (none given)"
        if weights is None
        else f"points to {weights}, which is not a file"
    )
    raise WeightsMissing(
        f"{needs}, but {setting.weights} {where}. {obtain} and set {setting.weights} to its "
        f"local path, or set {setting.fallback}."
    )


def check_sha256(path: Path, sha256: str | None, setting: WeightsSetting) -> None:
    """Raise WeightsMissing when a hash is configured and the file differs."""
    if sha256 is None:
        return
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise WeightsMissing(
            f"{path} has sha256 {actual}, but {setting.sha256} expects {sha256}. "
            f"Re-download the file or fix the setting; or set {setting.fallback}."
        )
