"""One file of the raw folder -> one manifest row: what it is, and whether the trial can use it.

`inspect_file` runs in worker processes, so it is a top-level function that takes and returns
plain values. It reads each file once, read-only, and decodes it exactly as `prepare` will
(`open_image` + `to_rgb`), so an accepted file is one `prepare` can use.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ldm.data.images import TooManyPixels, open_image, to_rgb

# Every reason a file can be rejected; metrics name one counter per code, so this list is fixed.
REASON_CODES = (
    "empty",
    "not_image",
    "corrupt",
    "too_small",
    "too_large",
    "symlink_outside",
    "broken_symlink",
    "symlink_dir",
    "unreadable",
    "duplicate",
)


def read_bytes(path: Path) -> bytes:
    """The whole file, opened read-only (a separate function so tests can simulate I/O errors)."""
    with open(path, "rb") as fh:
        return fh.read()


def new_row(rel_path: str) -> dict[str, Any]:
    """A row for `rel_path` with every field at its 'unknown' value."""
    parts = rel_path.split("/")
    return {
        "path": rel_path,
        "class": parts[0] if len(parts) > 1 else "",
        "format": "",
        "width": 0,
        "height": 0,
        "mode": "",
        "channels": 0,
        "bytes": 0,
        "sha256": "",
        "status": "accepted",
        "reason_code": "",
        "reason": "",
    }


def reject(row: dict[str, Any], code: str, reason: str) -> dict[str, Any]:
    """Mark `row` rejected with one of REASON_CODES and a sentence a user can act on."""
    assert code in REASON_CODES, code
    row.update(status="rejected", reason_code=code, reason=reason)
    return row


def _check_symlink(path: Path, root: Path) -> tuple[str, str] | None:
    """(code, reason) when the symlink must not be read; None for a link to a file inside root."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop (RuntimeError before Python 3.13)
        return "broken_symlink", f"broken symlink: its target {os.readlink(path)!r} does not exist"
    if target.is_dir():
        return "symlink_dir", "symlink to a folder; not followed (copy the images in instead)"
    if not target.is_relative_to(root.resolve()):
        return "symlink_outside", f"symlink to {target}, outside the data folder; not read"
    return None


def _describe(row: dict[str, Any], data: bytes) -> None:
    """Fill format/mode/size from the header alone (used when the image is not decoded)."""
    # A header too big or too odd to parse just leaves the fields at 'unknown'.
    with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as im:
        row.update(
            format=im.format or "",
            mode=im.mode,
            width=im.width,
            height=im.height,
            channels=len(im.getbands()),
        )


def inspect_file(root: str, rel_path: str, min_side: int, max_pixels: int) -> dict[str, Any]:
    """Examine one file under `root` and return its manifest row (see `new_row`); never raises."""
    row = new_row(rel_path)
    path = Path(root) / rel_path
    if path.is_symlink():
        problem = _check_symlink(path, Path(root))
        if problem:
            return reject(row, *problem)
    try:
        st = path.stat()
        # A FIFO or device would block or never end; only regular files are images.
        if not stat.S_ISREG(st.st_mode):
            return reject(row, "unreadable", "not a regular file (a pipe, socket or device)")
        data = read_bytes(path)
    except OSError as err:
        return reject(row, "unreadable", f"cannot read the file: {err.strerror or err}")
    row["bytes"] = len(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if not data:
        return reject(row, "empty", "empty file (0 bytes)")

    try:
        im = open_image(data, max_pixels)
    except TooManyPixels as err:
        _describe(row, data)
        w, h = row["width"], row["height"]
        size = f"{w}x{h} = {w * h:,} pixels" if w and h else f"too many pixels ({err})"
        reason = f"{size} > validate.max_pixels {max_pixels:,}; refused before decoding"
        return reject(row, "too_large", reason)
    except UnidentifiedImageError:
        return reject(row, "not_image", "not an image Pillow can read")
    except Exception as err:  # noqa: BLE001 - plugins raise OSError, SyntaxError, ValueError, ...
        _describe(row, data)
        return reject(row, "corrupt", f"truncated or corrupt image data: {err}")

    row.update(format=im.format or "", mode=im.mode, channels=len(im.getbands()))
    try:
        rgb = to_rgb(im)
    except Exception as err:  # noqa: BLE001 - an exotic mode or broken EXIF block
        row.update(width=im.width, height=im.height)
        return reject(row, "corrupt", f"decoded, but cannot convert to RGB: {err}")
    # Upright size (EXIF rotation applied): that is the picture `prepare` crops.
    row.update(width=rgb.width, height=rgb.height)
    short = min(rgb.width, rgb.height)
    if short < min_side:
        return reject(row, "too_small", f"shorter side {short} px < validate.min_side {min_side}")
    return row
