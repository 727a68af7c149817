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

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ldm.errors import LdmError
from ldm.nested import flatten

STEP_PREFIX = "step-"


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


@contextmanager
def exclusive(work_dir: Path) -> Iterator[None]:
    """Train in `work_dir` alone: a second process refuses at once instead of writing beside
    the first (say, a stage left running by a trial whose terminal was closed)."""
    from filelock import FileLock, Timeout

    work_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(work_dir.with_name(f".{work_dir.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LdmError(
            f"another process is training in {work_dir} (an earlier trial still running?): "
            "wait for it to finish or stop it, then run again"
        ) from None
    try:
        yield
    finally:
        lock.release()


def latest_state(work_dir: Path) -> Path | None:
    """The newest complete resume folder (temporary ones start with a dot and are ignored)."""
    found = sorted(p for p in work_dir.glob(f"{STEP_PREFIX}*") if (p / "state.pt").is_file())
    return found[-1] if found else None


def latest_step(work_dir: Path) -> int | None:
    """The step of the newest complete resume point in `work_dir`, from its folder's name."""
    latest = latest_state(work_dir)
    return int(latest.name.removeprefix(STEP_PREFIX)) if latest else None


def _changed(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every setting that differs, by its dotted name."""
    saved, now = flatten(saved), flatten(now)
    return [
        f"{key}: {saved.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key)
    ]


def split_settings(
    section: str, values: dict[str, Any], resumable: frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """({section: the recipe}, {section: the resumable rest}) of one params section."""
    recipe = {k: v for k, v in values.items() if k not in resumable}
    rest = {k: v for k, v in values.items() if k in resumable}
    return {section: recipe}, {section: rest}


def find_resume_point(
    work_dir: Path,
    identity: dict[str, Any],
    settings: dict[str, Any],
    steps: int,
    notice: Callable[[str], None],
    may_move: bool = True,
) -> tuple[Path, dict[str, Any]] | None:
    """The newest resume point these settings can continue from, with its saved state.

    `identity` holds what gives the saved tensors their meaning (architecture, data, the set of
    trained modules) and the recipe that produced them (learning rate, loss weights, batch):
    when any of it changed, continuing would give a model of neither setting, so the work
    folder is moved aside (never deleted) with a one-line notice naming the setting, and
    training starts over. `settings` holds what does not change the result (steps, intervals,
    device, precision): a run continues across changes to them, as when it is extended by
    raising its steps, and the notice lists them. A state already past `steps` (the steps were
    lowered) is set aside too: it is not this run.
    `may_move` False leaves the moving to the caller (`set_aside(work_dir, aside_name(...))`):
    in a DDP job rank 0 moves it once every rank has read it.
    """
    folder = latest_state(work_dir)
    if folder is None:
        return None
    state = torch.load(folder / "state.pt", weights_only=True)
    step = state["step"]
    changed = _changed(json.loads(state.get("identity", "{}")), _plain(identity))
    if step > steps:
        changed.append(f"it is past the {steps} steps asked for")
    if changed:
        aside = aside_name(work_dir, step)
        if may_move:
            set_aside(work_dir, aside)
        notice(
            f"{work_dir.name}: the training state at step {step} cannot continue because "
            f"{'; '.join(changed)}. It was moved to {aside}; training starts at step 0."
        )
        return None
    retuned = _changed(json.loads(state.get("settings", "{}")), _plain(settings))
    notice(
        f"{work_dir.name}: resuming at step {step}"
        + (f" with changed settings: {'; '.join(retuned)}" if retuned else "")
    )
    return folder, state


def aside_name(work_dir: Path, step: int) -> Path:
    """A free name beside `work_dir` for its state at `step`."""
    base = work_dir.with_name(f"{work_dir.name}.set-aside-at-step-{step}")
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    return target


def set_aside(work_dir: Path, target: Path) -> None:
    """Move a work folder out of the way, keeping it: a user may still want that state."""
    work_dir.rename(target)


def resume_metadata(identity: dict[str, Any], settings: dict[str, Any]) -> dict[str, str]:
    """What `save_state` stores so that `find_resume_point` can compare it later (as JSON
    strings: `torch.load(weights_only=True)` reads plain values only)."""
    return {
        "identity": json.dumps(_plain(identity), sort_keys=True),
        "settings": json.dumps(_plain(settings), sort_keys=True),
    }


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip: tuples become lists and paths strings, as they are once saved."""
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def load_state(folder: Path, modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Load each module's weights from `folder` and return the saved state (no pickle)."""
    for name, module in modules.items():
        unwrap(module).load_state_dict(load_file(folder / f"{name}.safetensors"))
    return torch.load(folder / "state.pt", weights_only=True)
