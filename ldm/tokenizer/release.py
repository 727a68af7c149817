"""A released tokenizer folder (`model.safetensors` + `config.json`) back into a model."""

from __future__ import annotations

from pathlib import Path

import torch

from ldm.tokenizer.model import Tokenizer, TokenizerArch
from ldm.training.checkpoint import load_release


def load_tokenizer(folder: Path) -> Tokenizer:
    """Rebuild a released tokenizer, latent statistics included, from its folder alone."""
    weights, config = load_release(folder)
    model = Tokenizer(TokenizerArch.from_dict(config["arch"]))
    model.load_state_dict(weights)
    model.set_latent_stats(torch.tensor(config["latent_mean"]), torch.tensor(config["latent_std"]))
    return model.eval()
