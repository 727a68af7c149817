"""Nested settings as dotted keys: `{"data": {"resolution": 32}}` is `data.resolution`.

The spelling `--set` (parsed here), MLflow's params, the resume notices and the config's error
messages share; the params file is read here too. Plain Python (YAML read on demand), so the
training toolkit can use it on a host without the config's libraries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldm.errors import ConfigError


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"data": {"resolution": 32}} -> {"data.resolution": 32}, the keys `--set` accepts."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"--set {text!r}: expected section.key=value, e.g. --set data.resolution=64"
        )
    import yaml

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def apply_overrides(
    raw: dict[str, Any], overrides: list[str], may_add: Callable[[list[str]], bool]
) -> dict[str, Any]:
    """Return a copy of `raw` with each `section.key=value` set; the key must already exist,
    or be one that `may_add(keys)` allows (a field a settings file may leave out)."""
    import copy

    merged = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or (key not in node and not may_add(keys)):
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"--set {text!r}: unknown key '{where}' (known here: {known})")
            if depth == len(keys) - 1:
                node[key] = value
            else:
                node = node[key]
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    """The settings file at `path` as nested dicts; ConfigError when it is missing or malformed."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (pass --params PATH)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def validation_error(err: Any, source: str) -> ConfigError:
    """A pydantic ValidationError as one ConfigError naming each faulty key by its dotted name."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {e['msg']}{got}")
    return ConfigError(f"{source}: invalid config\n" + "\n".join(lines))
