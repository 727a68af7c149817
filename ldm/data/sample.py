"""A small real dataset to try the pipeline on: random crops of photos bundled in scikit-image.

Each class is one photograph (or texture) that ships inside the scikit-image wheel, so nothing is
downloaded. Every image is a random square crop, randomly rotated by a multiple of 90 degrees and
maybe mirrored, resized and saved as a JPEG; grayscale photos stay grayscale, as real input may.

Crops of one photo may overlap, so the train and val images of this sample are NOT independent:
it is a demo dataset for checking that the pipeline runs, not for measuring generalisation.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ldm.errors import DataError

# class folder -> `skimage.data` loader; each reads a file bundled in the wheel (no network).
PHOTOS: dict[str, str] = {
    "brick": "brick",  # grayscale texture, 512 x 512
    "coffee": "coffee",  # RGB photo, 400 x 600
    "galaxies": "hubble_deep_field",  # RGB photo, 872 x 1000
    "grass": "grass",  # grayscale texture, 512 x 512
    "gravel": "gravel",  # grayscale texture, 512 x 512
    "tissue": "immunohistochemistry",  # RGB micrograph, 512 x 512
}
JPEG_QUALITY = 92
CROP_FRACTION = (0.25, 0.5)  # crop side, as a share of the photo's shorter side


def load_photo(loader: str) -> np.ndarray:
    """One bundled photo as uint8 (H x W or H x W x 3)."""
    import skimage.data  # imported here: only `ldm sample` needs scikit-image

    photo = np.asarray(getattr(skimage.data, loader)())
    if photo.dtype != np.uint8:
        raise DataError(f"skimage.data.{loader}() is {photo.dtype}, expected uint8")
    return photo


def random_view(photo: np.ndarray, rng: np.random.Generator, size: int) -> Image.Image:
    """A random square crop, rotation and mirror of `photo`, resized to size x size."""
    short = min(photo.shape[:2])
    side = int(rng.integers(round(CROP_FRACTION[0] * short), round(CROP_FRACTION[1] * short) + 1))
    top = int(rng.integers(0, photo.shape[0] - side + 1))
    left = int(rng.integers(0, photo.shape[1] - side + 1))
    crop = np.rot90(photo[top : top + side, left : left + side], k=int(rng.integers(4)))
    if rng.integers(2):
        crop = crop[:, ::-1]
    # LANCZOS is the usual choice for a one-step downscale of a photo without aliasing.
    return Image.fromarray(np.ascontiguousarray(crop)).resize(
        (size, size), resample=Image.Resampling.LANCZOS
    )


def _check_empty(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder; pick an empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir}: folder is not empty; the sample never overwrites files, "
            "so pick an empty or new folder"
        )


def write_sample(
    out_dir: Path,
    per_class: int,
    size: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write per_class JPEGs per class folder into the empty `out_dir`; return counts per class.

    `progress`, if given, is called with the number of images just written (an increment).
    """
    out_dir = Path(out_dir)
    _check_empty(out_dir)
    if per_class < 1 or size < 8:
        raise DataError(f"per_class must be >= 1 and size >= 8 (got {per_class}, {size})")
    # Written beside `out_dir` and moved in whole: an interrupted run leaves no half sample that
    # the next `ldm run` would take for the user's data.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        counts = _write_classes(tmp, per_class, size, seed, progress)
        if out_dir.exists():
            out_dir.rmdir()  # empty, as checked above
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def _write_classes(
    out_dir: Path, per_class: int, size: int, seed: int, progress: Callable[[int], None] | None
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for index, (name, loader) in enumerate(sorted(PHOTOS.items())):
        photo = load_photo(loader)
        # One stream per class: each class's images depend only on (seed, class), not on order.
        rng = np.random.default_rng([seed, index])
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            # "x" mode: fail rather than overwrite, should anything appear there meanwhile.
            with open(folder / f"{name}-{i:04d}.jpg", "xb") as fh:
                random_view(photo, rng, size).save(fh, format="JPEG", quality=JPEG_QUALITY)
            if progress is not None:
                progress(1)
        counts[name] = per_class
    return counts
