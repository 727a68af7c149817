"""Images from a released LightningDiT and its tokenizer: what `ldm sample` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ldm.config import SampleConfig
from ldm.data.batches import to_uint8
from ldm.diffusion import create_model
from ldm.diffusion.sample import sample_images
from ldm.errors import DataError
from ldm.tokenizer.release import load_tokenizer
from ldm.training.checkpoint import load_release


def load_diffusion(folder: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a released LightningDiT (EMA weights) from its folder alone."""
    try:
        weights, config = load_release(folder)
    except FileNotFoundError as err:
        raise DataError(f"{err}; train one with `ldm train-diffusion`") from None
    model = create_model(**config["model"])
    model.load_state_dict(weights)
    return model.eval(), config


def labels_for(n: int, class_map: dict[str, int], class_name: str | None) -> torch.Tensor | None:
    """One class (by name or id) for every image, or the classes in turn; None for an
    unconditional model."""
    if len(class_map) <= 1:
        return None
    if class_name is not None:
        return torch.full((n,), class_id(class_name, class_map), dtype=torch.long)
    return torch.arange(n) % len(class_map)


def class_id(text: str, class_map: dict[str, int]) -> int:
    """A class given by its name or its id, as the class map numbers it."""
    if text in class_map:
        return class_map[text]
    if text.strip().isdigit() and int(text) in class_map.values():
        return int(text)
    known = ", ".join(
        f"{name} ({i})" for name, i in sorted(class_map.items(), key=lambda kv: kv[1])
    )
    raise DataError(f"unknown class {text!r}; the classes are {known}")


def generate(
    folder: Path,
    root: Path,
    n: int,
    class_name: str | None,
    settings: SampleConfig,
    device: torch.device,
) -> np.ndarray:
    """n images, uint8 (n, H, W, 3), deterministic under `settings.seed`."""
    model, config = load_diffusion(folder)
    tokenizer = load_tokenizer(root / config["tokenizer"])
    labels = labels_for(n, config["class_map"], class_name)
    return draw(model, tokenizer, config["model"], n, labels, settings, device)


def draw(
    model: torch.nn.Module,
    tokenizer: torch.nn.Module,
    model_config: dict,
    n: int,
    labels: torch.Tensor | None,
    settings: SampleConfig,
    device: torch.device,
) -> np.ndarray:
    """n images from loaded models, uint8 (n, H, W, 3); the same seed gives the same images."""
    model.to(device)
    tokenizer.to(device)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    shape = (
        n,
        model_config["latent_channels"],
        model_config["latent_size"],
        model_config["latent_size"],
    )
    labels = None if labels is None else labels.to(device)
    images = sample_images(model, shape, labels, settings, generator, tokenizer.decode)
    return to_uint8(images)


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W, 3) -> one (rows·H, columns·W, 3) picture, blank cells at the end."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * h, columns * w, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return grid
