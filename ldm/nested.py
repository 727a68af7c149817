"""Nested settings as dotted keys: `{"data": {"resolution": 32}}` is `data.resolution`.

The spelling `--set`, MLflow's params and the resume notices share. Plain Python only, so the
training toolkit can use it on a host without the config's libraries.
"""

from __future__ import annotations

from typing import Any


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
