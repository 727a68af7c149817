"""Changes to params.yaml itself, made the way a person would: comments and order kept.

`ldm run --set` and `ldm preset` write here (as `dvc exp run -S` does), so that DVC's record of
what ran and the file agree.
"""

from __future__ import annotations

from pathlib import Path

from ldm.config import apply_overrides, parse_override, read_yaml, validate_dict


def write_overrides(path: Path, overrides: list[str]) -> list[str]:
    """Apply `section.key=value` overrides to the params file itself, keeping its comments.

    `ldm run --set` does this, as `dvc exp run -S` does, so that DVC's record of what ran and
    the file agree. The result is validated before anything is written. Returns one line per
    changed value.
    """
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
