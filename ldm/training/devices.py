"""Which device a stage computes on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm.errors import LdmError

if TYPE_CHECKING:
    import torch


def pick_device(setting: str) -> torch.device:
    """`auto` is CUDA when visible, else the CPU; `cuda` without a GPU is a setup error."""
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise LdmError("device is cuda but no CUDA device is visible; use auto or cpu")
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)
