"""Checkpoints that never load pickles and are never seen half-written.

Two kinds:
- a *release*: `model.safetensors` + `config.json` in the stage's output folder (what later
  stages and the registry use; the config rebuilds the model from the file alone);
- a *resume state*: `state.pt` (optimiser, step, RNG; tensors and plain values only, read back
  with `torch.load(weights_only=True)`) + `model.safetensors` (+ more modules) in a numbered
  folder under the stage's work folder.

Every write goes to a temporary sibling folder that is renamed into place, so whatever a crash
leaves behind, the newest complete folder is the one that is found.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

STEP_PREFIX = "step-"


def fingerprint(payload: dict[str, Any]) -> str:
    """A stable hash of the settings a resume state belongs to."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _write_folder(target: Path, files: dict[str, Any]) -> None:
    """Write {name: tensors-dict | json-able | torch payload} into `target`, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name, content in files.items():
            if name.endswith(".safetensors"):
                save_file(
                    {k: v.detach().contiguous().cpu() for k, v in content.items()}, tmp / name
                )
            elif name.endswith(".json"):
                (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
            else:
                torch.save(content, tmp / name)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DDP wrappers, so saved keys never change."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not isinstance(inner, nn.Module):
            return model
        model = inner


def save_release(folder: Path, model: nn.Module, config: dict[str, Any]) -> None:
    _write_folder(folder, {"model.safetensors": unwrap(model).state_dict(), "config.json": config})


def load_release(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, config) of a release folder; raises FileNotFoundError naming what is missing."""
    weights, config = folder / "model.safetensors", folder / "config.json"
    for path in (weights, config):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run the stage that writes {folder.name}")
    return load_file(weights), json.loads(config.read_text())


def save_state(
    work_dir: Path, step: int, modules: dict[str, nn.Module], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write a resume point for `step`; keep the newest `keep` complete ones."""
    files: dict[str, Any] = {
        f"{name}.safetensors": unwrap(m).state_dict() for name, m in modules.items()
    }
    files["state.pt"] = {**state, "step": step}
    target = work_dir / f"{STEP_PREFIX}{step:08d}"
    _write_folder(target, files)
    for stale in sorted(work_dir.glob(f"{STEP_PREFIX}*"))[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def latest_state(work_dir: Path) -> Path | None:
    """The newest complete resume folder (temporary ones start with a dot and are ignored)."""
    found = sorted(p for p in work_dir.glob(f"{STEP_PREFIX}*") if (p / "state.pt").is_file())
    return found[-1] if found else None


def load_state(folder: Path, modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Load each module's weights from `folder` and return the saved state (no pickle)."""
    for name, module in modules.items():
        unwrap(module).load_state_dict(load_file(folder / f"{name}.safetensors"))
    return torch.load(folder / "state.pt", weights_only=True)
