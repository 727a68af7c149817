"""The tokenizer stages: `train_tokenizer` (plain KL-VAE) and `align_tokenizer` (VA-VAE).

Both train the same architecture with the same loop and end the same way: latent statistics
over the train split stored in the tokenizer, reconstruction quality on the val split, and a
release folder `data/checkpoints/tokenizer-<variant>/` (`model.safetensors` + `config.json`).
Both also measure how close their latents are to the foundation model's features (linear CKA),
so the two variants can be compared on that axis too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ldm.config import Config
from ldm.errors import DataError, LdmError
from ldm.paths import Paths
from ldm.progress import progress_bar
from ldm.stages.result import StageResult
from ldm.tracking import Tracker

if TYPE_CHECKING:
    import torch

    from ldm.tokenizer.model import Tokenizer


def train_tokenizer(cfg: Config, paths: Paths, tracker: Tracker) -> StageResult:
    """Train the plain tokenizer: reconstruction losses only."""
    return _train(cfg, paths, tracker, stage="train_tokenizer", variant="plain", aligned=False)


def align_tokenizer(cfg: Config, paths: Paths, tracker: Tracker) -> StageResult:
    """Alignment tuning: the same tokenizer trained with VA-VAE's VF loss added."""
    return _train(cfg, paths, tracker, stage="align_tokenizer", variant="aligned", aligned=True)


def pick_device(setting: str) -> torch.device:
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise LdmError("tokenizer.device is cuda but no CUDA device is visible; use auto or cpu")
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)


def load_tokenizer(folder: Path) -> Tokenizer:
    """Rebuild a released tokenizer, latent statistics included, from its folder alone."""
    import torch

    from ldm.checkpoint import load_release
    from ldm.tokenizer.model import Tokenizer as TokenizerModel
    from ldm.tokenizer.model import TokenizerArch

    weights, config = load_release(folder)
    model = TokenizerModel(TokenizerArch.from_dict(config["arch"]))
    model.load_state_dict(weights)
    model.set_latent_stats(torch.tensor(config["latent_mean"]), torch.tensor(config["latent_std"]))
    return model.eval()


def _train(
    cfg: Config, paths: Paths, tracker: Tracker, stage: str, variant: str, aligned: bool
) -> StageResult:
    import torch

    from ldm import checkpoint
    from ldm.align import VFProjection, load_foundation
    from ldm.data.batches import ImageBatches, to_model_range
    from ldm.data.prepare import load_split
    from ldm.evaluate import load_eval_features
    from ldm.tokenizer.evaluation import latent_statistics, measure_reconstruction
    from ldm.tokenizer.model import Tokenizer, arch_from_preset
    from ldm.tokenizer.perceptual import build_perceptual
    from ldm.tokenizer.train import Alignment, TrainRun, fit

    tok, align = cfg.tokenizer, cfg.align
    meta_path = paths.prepared / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: run `ldm prepare` first")
    meta = json.loads(meta_path.read_text())
    if meta["resolution"] != cfg.data.resolution:
        raise DataError(
            f"prepared images are {meta['resolution']} px but data.resolution is "
            f"{cfg.data.resolution}: run `ldm prepare` again"
        )
    train_images, train_labels = load_split(paths.prepared, "train")
    val_images = to_model_range(load_split(paths.prepared, "val")[0])  # (N, 3, H, W)

    device = pick_device(tok.device)
    torch.manual_seed(tok.seed)  # the initial weights
    model = Tokenizer(arch_from_preset(tok.preset, cfg.data.resolution))
    if aligned and align.init == "plain":
        try:
            plain = load_tokenizer(paths.tokenizer("plain"))
        except FileNotFoundError:
            raise DataError(
                f"align.init is plain but {paths.tokenizer('plain')} holds no "
                "released tokenizer: run `ldm train-tokenizer` first, or set "
                "align.init: scratch"
            ) from None
        if plain.arch != model.arch:
            raise DataError(
                f"the plain tokenizer is a {plain.arch} but tokenizer.preset asks for "
                f"{model.arch}: run `ldm train-tokenizer` again"
            )
        model.load_state_dict(plain.state_dict())
    perceptual = build_perceptual(tok.perceptual, _local(paths, tok.lpips_vgg_weights))
    if perceptual is not None:
        perceptual.to(device)
    foundation = load_foundation(
        align.foundation, _local(paths, align.foundation_weights), align.foundation_sha256
    ).to(device)
    alignment = None
    steps = tok.steps
    if aligned:
        steps = sum(phase.steps for phase in align.phases)
        projection = VFProjection(model.arch.latent_channels, foundation.feature_dim)
        alignment = Alignment(
            foundation,
            projection,
            list(align.phases),
            align.cos_margin,
            align.distmat_margin,
            align.cos_weight,
            align.distmat_weight,
            align.adaptive_max,
        )
    run = TrainRun(
        model=model,
        cfg=tok,
        steps=steps,
        batches=ImageBatches(train_images, train_labels, tok.batch_size, tok.seed, hflip=True),
        val_images=val_images,
        perceptual=perceptual,
        alignment=alignment,
        work_dir=paths.work(stage),
        device=device,
        fingerprint=checkpoint.fingerprint(
            {
                "stage": stage,
                "tokenizer": cfg.section("tokenizer"),
                "align": cfg.section("align") if aligned else None,
                "data": meta["source_manifest_sha256"],
                "resolution": cfg.data.resolution,
            }
        ),
    )
    with progress_bar(stage, steps) as advance:
        metrics = fit(run, tracker, advance)

    mean, std = latent_statistics(model, train_images, device, tok.batch_size)
    model.set_latent_stats(mean, std)
    eval_net = load_eval_features(
        cfg.evaluate.features, _local(paths, cfg.evaluate.features_weights)
    ).to(device)
    metrics |= measure_reconstruction(
        model, val_images, device, cfg.evaluate.batch_size, perceptual, eval_net, foundation
    )
    release = paths.tokenizer(variant)
    checkpoint.save_release(
        release,
        model,
        {
            "arch": model.arch.to_dict(),
            "variant": variant,
            "latent_mean": mean.tolist(),
            "latent_std": std.tolist(),
            "perceptual": perceptual.name if perceptual is not None else "none",
            "foundation": foundation.name if aligned else None,
            "steps": steps,
            "source_manifest_sha256": meta["source_manifest_sha256"],
        },
    )
    shutil.rmtree(run.work_dir, ignore_errors=True)  # released: the resume points are spent
    return StageResult(metrics, [release / "config.json"])


def _local(paths: Paths, path: Path | None) -> Path | None:
    """A weights path from params.yaml, relative to the project root; None stays None."""
    return None if path is None else paths.resolve(path)
