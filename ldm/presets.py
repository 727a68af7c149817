"""Named presets (presets/<name>.yaml): `section.key: value` lines `ldm preset` writes into
params.yaml. A preset may start from another one with `extends: <name>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldm.config import ConfigError


def preset_values(folder: Path, name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset's values, those of the presets it extends first."""
    import yaml

    source = folder / f"{name}.yaml"
    if not source.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"no preset {name!r} in {folder}; known: {known}")
    if name in seen:
        raise ConfigError(f"presets extend each other in a circle: {' -> '.join((*seen, name))}")
    values = yaml.safe_load(source.read_text()) or {}
    base = values.pop("extends", None)
    return (preset_values(folder, base, (*seen, name)) if base else {}) | values
