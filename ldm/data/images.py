"""Decoding any image Pillow reads into an 8-bit RGB picture, the one way every stage does it.

Kept in one place so `validate` accepts exactly what `prepare` can use: grayscale, palette, RGBA,
CMYK, 16-bit and EXIF-rotated files all come out as upright RGB.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# We compare the header's size against `validate.max_pixels` ourselves before decoding, so
# Pillow's own guard (a warning above 89 MP, an error above 179 MP) only adds noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

ORIENTATION = 0x0112  # the EXIF tag that says how the camera was held


class TooManyPixels(ValueError):
    """The header announces more pixels than allowed; nothing was decoded."""


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header, refuse oversized images, then fully decode (raises on truncated data)."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise TooManyPixels(str(err)) from None
    width, height = im.size
    if width * height > max_pixels:
        raise TooManyPixels(f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
    im.load()  # decodes every byte: truncated or corrupt data raises here, not later
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: EXIF orientation applied, alpha composited on white, 16-bit scaled."""
    if im.getexif().get(ORIENTATION, 1) != 1:  # most files are upright: skip the copy
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit files hold 0..65535; a float or 32-bit image already in 0..255 stays as it is.
        scale = 257.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        im = Image.fromarray(np.clip(arr / scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im if im.mode == "RGB" else im.convert("RGB")
