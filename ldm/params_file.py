"""The settings files themselves: params.yaml, changed the way a person would (comments and
order kept), and the named presets (presets/<name>.yaml) `ldm preset` writes into it.

`ldm run --set` and `ldm preset` write here (as `dvc exp run -S` does), so that DVC's record of
what ran and the file agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldm.config import ConfigError, apply_overrides, read_yaml, validate_dict
from ldm.nested import parse_override


def write_overrides(path: Path, overrides: list[str]) -> list[str]:
    """Apply `section.key=value` overrides to the params file itself, keeping its comments;
    the result is validated before anything is written. Returns one line per changed value."""
    from ruamel.yaml import YAML

    validate_dict(apply_overrides(read_yaml(path), overrides), f"{path} with --set overrides")
    yaml_rt = YAML()  # round-trip mode: comments and key order survive
    yaml_rt.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own list style
    yaml_rt.width = 4096  # never re-wrap a long line
    yaml_rt.representer.add_representer(  # keep `null` written out, as the file has it
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = yaml_rt.load(path.read_text())
    changes = []
    for text in overrides:
        keys, value = parse_override(text)
        node = doc
        for key in keys[:-1]:
            node = node[key]
        if node.get(keys[-1]) != value:
            changes.append(f"{path.name}: {'.'.join(keys)}: {node.get(keys[-1])!r} -> {value!r}")
            node[keys[-1]] = value
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        yaml_rt.dump(doc, handle)
    tmp.replace(path)
    return changes


def replace_params(path: Path, source: Path) -> str:
    """Make `source` the pipeline's params file (DVC reads params.yaml alone), keeping the
    previous file under .ldm/params-history/; returns a line saying so."""
    import shutil
    import time

    validate_dict(read_yaml(source), str(source))
    if path.is_file() and path.read_bytes() == source.read_bytes():
        return f"{source} is already params.yaml"
    history = path.parent / ".ldm" / "params-history"
    history.mkdir(parents=True, exist_ok=True)
    kept = history / f"params-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    if path.is_file():
        shutil.copy2(path, kept)
    tmp = path.with_name(path.name + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(path)
    return f"params.yaml now holds {source} (the previous one is kept as {kept})"


# A preset is `section.key: value` lines; it may start from another one with `extends: <name>`.
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
