"""Files and folders written whole: a reader never sees a half-written one, whatever a crash
leaves."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


def write_json_atomic(path: Path, payload: dict) -> None:
    """`payload` as indented JSON at `path`, through a temporary sibling renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace `out_dir` by the complete `tmp`; the old folder goes only once the new one is in."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
