"""The tokenizer stage `train_tokenizer@<cell>`: a KL-VAE per variant and seed, aligned or not.

Every variant trains from scratch for `tokenizer.steps` steps with the same recipe, so their
differences are the variant's settings alone (architecture, alignment, the regularisers
equivariance and latent denoising), not extra training.
Each ends the same way: latent statistics over the train split stored in the tokenizer,
reconstruction quality on the val split, and a release folder
`data/checkpoints/tokenizer-<cell>/` (`model.safetensors` + `config.json`). Every variant also
measures how close its latents are to the foundation model's features (linear CKA), so plain
and aligned variants are compared on that axis too. With tokenizer.world_size > 1 the stage runs
under torchrun: every rank trains its slice of each batch, rank 0 alone measures and releases.
A cell `<variant>-<seed>` trains with tokenizer.seed + its seed: its initial weights, batch order,
flips and posterior noise all derive from that one number.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Any

from ldm.config import Config
from ldm.cost import Clock
from ldm.errors import DataError
from ldm.paths import Paths, split_cell
from ldm.progress import notice, progress_bar
from ldm.stages.result import StageResult
from ldm.tracker import Tracker
from ldm.training.devices import pick_device

# Settings that change how a run goes, not what it computes: a run resumes across changes to
# them (raising `steps` extends it, on the schedule `ldm.training.schedule` describes). Any other
# change restarts it, keeping the old state aside.
RESUMABLE_SETTINGS = frozenset(
    {
        "steps",
        "eval_every",
        "checkpoint_every",
        "grid_images",
        "device",
        "world_size",
        "precision",
        "compile",
        "channels_last",
    }
)


REGULARISERS = ("equivariance", "latent_denoising")  # a variant's switches, and their sections


def variant_identity(cfg: Config, variant: str) -> dict[str, Any]:
    """What a variant adds to its cells' resume identity: its entry, and the section of each
    option it switches on (`align`, the regularisers). A section it leaves off is not read: a
    plain variant's resume point survives a change to equivariance.weight. The regularisers'
    switches are left out while false, so that states saved before they existed still resume."""
    v = cfg.variant(variant)
    entry = cfg.section("variants")[variant]
    entry = {key: value for key, value in entry.items() if value or key not in REGULARISERS}
    used = ["align"] if v.align else []
    used += [name for name in REGULARISERS if getattr(v, name)]
    return {"variants": {variant: entry}} | {name: cfg.section(name) for name in used}


def train_tokenizer(cfg: Config, paths: Paths, tracker: Tracker, cell: str) -> StageResult:
    """Train one cell's tokenizer; release it with its latent statistics and quality."""
    clock = Clock()  # this attempt's hours, from its start: its resume points keep them
    import torch

    from ldm.data.batches import ImageBatches, check_images
    from ldm.data.prepare import load_split
    from ldm.metrics.frechet import feature_stats
    from ldm.pretrained.features import load_eval_features
    from ldm.pretrained.foundation import load_foundation
    from ldm.pretrained.perceptual import build_perceptual, load_perceptual_metric
    from ldm.stages.kept_features import reference_features
    from ldm.tokenizer.align import VFProjection
    from ldm.tokenizer.evaluation import latent_statistics, measure_reconstruction
    from ldm.tokenizer.model import Tokenizer, arch_from_preset
    from ldm.tokenizer.regularisers import Equivariance, LatentDenoising
    from ldm.tokenizer.train import Alignment, TrainRun, fit
    from ldm.training import checkpoint
    from ldm.training.distributed import cleanup, init_distributed

    variant, seed = split_cell(cell)
    tok = cfg.tokenizer.model_copy(update={"seed": cfg.tokenizer.seed + seed})
    align, v = cfg.align, cfg.variant(variant)
    stage = f"train_tokenizer@{cell}"
    meta_path = paths.prepared / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: run `ldm prepare` first")
    meta = json.loads(meta_path.read_text())
    if meta["resolution"] != cfg.data.resolution:
        raise DataError(
            f"prepared images are {meta['resolution']} px but data.resolution is "
            f"{cfg.data.resolution}: run `ldm prepare` again"
        )
    train_images, train_labels = load_split(paths.prepared, "train")  # shards, read per batch
    val_images = load_split(paths.prepared, "val")[0]  # (N, H, W, 3) uint8 shards, as above
    val_check = check_images(val_images)  # (K, 3, H, W), a fixed subset for in-training checks

    recipe, resumable = checkpoint.split_settings(
        "tokenizer", cfg.section("tokenizer") | {"seed": tok.seed}, RESUMABLE_SETTINGS
    )
    device = pick_device(tok.device)
    dist = init_distributed(device.type)  # under torchrun: one rank of tokenizer.world_size
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    torch.manual_seed(tok.seed)  # the initial weights
    arch = arch_from_preset(v.preset, cfg.data.resolution, v.latent_channels)
    model = Tokenizer(arch)
    perceptual = build_perceptual(tok.perceptual, paths.local(tok.lpips_vgg_weights))
    if perceptual is not None:
        perceptual.to(device)
    # Loaded for plain variants too: their CKA to it is the baseline the aligned ones beat.
    foundation = load_foundation(
        v.foundation, paths.local(align.foundation_weights), align.foundation_sha256
    ).to(device)
    alignment = None
    if v.align:
        projection = VFProjection(arch.latent_channels, foundation.feature_dim)
        alignment = Alignment(
            foundation,
            projection,
            list(v.phases),
            v.cos_margin,
            v.distmat_margin,
            align.cos_weight,
            align.distmat_weight,
            align.adaptive_max,
        )
    eq = ld = None
    if v.equivariance:
        e = cfg.equivariance
        eq = Equivariance(e.weight, e.share, tuple(e.scales), e.rotations)
    if v.latent_denoising:
        d = cfg.latent_denoising
        ld = LatentDenoising(d.gamma, d.mask, d.mask_ratio)
    run = TrainRun(
        model=model,
        cfg=tok,
        steps=tok.steps,
        batches=ImageBatches(train_images, train_labels, tok.batch_size, tok.seed, hflip=True),
        val_images=val_check,
        perceptual=perceptual,
        alignment=alignment,
        work_dir=paths.work(stage),
        identity={
            "architecture": arch.to_dict(),
            "data (prepared train split)": meta["source_manifest_sha256"],
            **recipe,
        }
        | variant_identity(cfg, variant),
        settings=resumable,
        device=device,
        notice=notice,
        dist=dist,
        clock=clock,
        equivariance=eq,
        latent_denoising=ld,
    )
    try:
        bar = (
            progress_bar(stage, tok.steps, images_per_unit=tok.batch_size)
            if dist.is_main
            else nullcontext(lambda n, **_: None)
        )
        alone = checkpoint.exclusive(run.work_dir) if dist.is_main else nullcontext()
        with alone, bar as advance:
            metrics = fit(run, tracker, advance)
    finally:
        cleanup()
    if not dist.is_main:  # rank 0 alone measures and releases, with no process group to time out
        return StageResult({}, [])

    mean, std = latent_statistics(model, train_images, device, tok.batch_size)
    model.set_latent_stats(mean, std)
    eval_net = load_eval_features(
        cfg.evaluate.features,
        paths.local(cfg.evaluate.features_weights),
        cfg.evaluate.features_sha256,
    ).to(device)
    # never the loss's network: a distance in the network trained against flatters the model
    perceptual_metric = load_perceptual_metric(
        tok.perceptual, paths.local(tok.lpips_vgg_weights)
    ).to(device)
    real, _ = reference_features(paths, "val", eval_net.name)
    metrics |= measure_reconstruction(
        model,
        val_images,
        device,
        cfg.evaluate.batch_size,
        perceptual_metric,
        eval_net,
        feature_stats(real),
        foundation,
    )
    release = paths.tokenizer(cell)
    checkpoint.save_release(
        release,
        model,
        {
            "arch": model.arch.to_dict(),
            "variant": variant,
            "seed": tok.seed,
            "latent_mean": mean.tolist(),
            "latent_std": std.tolist(),
            "perceptual": perceptual.name if perceptual is not None else "none",
            "foundation": foundation.name if v.align else None,
            # the settings of each regulariser it trained with; none: {}
            "regularisers": {name: cfg.section(name) for name in REGULARISERS if getattr(v, name)},
            "steps": tok.steps,
            "source_manifest_sha256": meta["source_manifest_sha256"],
        },
    )
    return StageResult(metrics, [release / "config.json"], carried=run.carried)
