"""Tiny generators for the registry and serving tests: a tokenizer and a LightningDiT released as
the stages release them, an evaluation record, and a trial run to register them under."""

from __future__ import annotations

from pathlib import Path

import torch

from ldm import config, tracking
from ldm.diffusion import create_model
from ldm.records import EvaluateRecord
from ldm.tokenizer.model import Tokenizer, TokenizerArch
from ldm.tracking.registry import Provenance, Registration, register_generator
from ldm.training.checkpoint import save_release
from tests.test_diffusion import unzero

MODEL = "ldm-generator"
CLASSES = {"disc": 0, "ring": 1, "stripe": 2}


def write_generator(root: Path, seed: int) -> tuple[Path, Path]:
    """A tiny tokenizer and a tiny class-conditional LightningDiT, released as the stages do."""
    torch.manual_seed(seed)
    arch = TokenizerArch(
        ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), latent_channels=4,
        resolution=16,
    )  # fmt: skip
    tokenizer_dir = root / "data/checkpoints/tokenizer-plain-0"
    save_release(
        tokenizer_dir,
        Tokenizer(arch),
        {"arch": arch.to_dict(), "latent_mean": [0.1] * 4, "latent_std": [0.9] * 4},
    )
    dit = unzero(create_model("T/2", 4, 8, len(CLASSES)))
    diffusion_dir = root / "data/checkpoints/diffusion-plain-0"
    save_release(
        diffusion_dir,
        dit,
        {
            "model": dit.config,
            "class_map": CLASSES,
            "tokenizer": "data/checkpoints/tokenizer-plain-0",
        },
    )
    return tokenizer_dir, diffusion_dir


def evaluation(fd: float = 30.0, precision: float = 0.5, usd: float = 0.02) -> EvaluateRecord:
    """An evaluation whose relative FD is (fd - 10) / 50."""
    cost = {
        "wall_seconds": 10.0, "cpu_hours": 0.01, "gpu_hours": 0.0, "usd": usd,
        "device_kind": "cpu", "device_count": 0,
    }  # fmt: skip
    return EvaluateRecord.model_validate(
        {
            "variant": "plain",
            "tokenizer": {
                "psnr": 24.0, "ssim": 0.7, "perceptual_lpips_vgg": 0.2,
                "perceptual_net": "lpips_vgg", "rfd_effnet_lite2": 5.0,
                "feature_net": "effnet_lite2", "cka_effnet_lite0": 0.3,
                "cka_foundation": "effnet_lite0",
            },
            "generation": {
                "feature_net": "effnet_lite2", "num_samples": 64, "fd_effnet_lite2": fd,
                "precision": precision, "recall": 0.4, "density": 0.8, "coverage": 0.5,
                "nearest_k": 3, "fd_per_class_effnet_lite2": None,
            },
            "reference": {
                "feature_net": "effnet_lite2", "fd_train_val": 10.0, "fd_random_latents": 60.0,
            },
            "speed": {
                "solver": "euler", "steps": 4, "cfg_scale": 1.5, "device_kind": "cpu",
                "sample_images_per_second": 10.0, "encode_images_per_second": 10.0,
                "decode_images_per_second": 10.0,
            },
            "cost": {"total": cost, "stages": {"evaluate": cost}},
        }
    )  # fmt: skip


def trial_run_id(root: Path) -> str:
    with tracking.trial_run(root, "ldm-poc", root / "params.yaml", "trial", {}) as run:
        return run.run_id


def register(root: Path, record: EvaluateRecord, run_id: str) -> Registration:
    cfg = config.load(root / "params.yaml")
    checkpoints = root / "data/checkpoints"
    provenance = Provenance(run_id, "m" * 64, "c" * 40, "d" * 64)
    return register_generator(
        root,
        cfg.registry.model_name,
        checkpoints / "tokenizer-plain-0",
        checkpoints / "diffusion-plain-0",
        cfg.sample,
        record,
        provenance,
    )
