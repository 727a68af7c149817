"""The per-variant stages: `encode` (cache latents) and `train_diffusion` (LightningDiT).

A variant names a released tokenizer (`data/checkpoints/tokenizer-<variant>/`). Latents are
stored already normalised by that tokenizer's own statistics (`Tokenizer.encode`), and samples
are decoded with `Tokenizer.decode`, so no stage ever applies a latent scale by hand.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

from ldm.config import Config
from ldm.errors import DataError
from ldm.paths import Paths
from ldm.progress import progress_bar
from ldm.stages.result import StageResult
from ldm.stages.tokenizer import load_tokenizer, pick_device
from ldm.tracking import Tracker

if TYPE_CHECKING:
    import numpy as np

    from ldm.tokenizer.model import Tokenizer


def encode(cfg: Config, paths: Paths, tracker: Tracker, variant: str) -> StageResult:
    """Encode the prepared train split and its mirror image once; store latents and labels."""
    import numpy as np
    import torch

    from ldm.data.batches import to_model_range
    from ldm.data.prepare import load_split

    device = pick_device(cfg.tokenizer.device)
    model = released_tokenizer(paths, variant).to(device)
    images, labels = load_split(paths.prepared, "train")
    batch = cfg.evaluate.batch_size
    chunks: list[np.ndarray] = []
    with progress_bar(f"encode@{variant}", 2 * len(images)) as advance, torch.no_grad():
        for flip in (False, True):  # the mirror images double the data for free
            for start in range(0, len(images), batch):
                x = to_model_range(images[start : start + batch]).to(device)
                z = model.encode(x.flip(-1) if flip else x)  # (B, d, h, w), normalised
                chunks.append(z.float().cpu().numpy())
                advance(len(x))
    latents = np.concatenate(chunks)  # (2N, d, h, w)
    all_labels = np.concatenate([labels, labels]).astype(np.int64)
    mean, std = latents.mean(axis=(0, 2, 3)), latents.std(axis=(0, 2, 3))
    meta = json.loads((paths.prepared / "meta.json").read_text())
    out = paths.latents(variant)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "latents.npy", latents.astype(np.float32), allow_pickle=False)
    np.save(tmp / "labels.npy", all_labels, allow_pickle=False)
    (tmp / "meta.json").write_text(
        json.dumps(
            {
                "variant": variant,
                "count": len(latents),
                "shape": list(latents.shape[1:]),
                "num_classes": meta["num_classes"],
                "class_map": meta["class_map"],
                "channel_mean": mean.tolist(),
                "channel_std": std.tolist(),
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    # After the tokenizer's own normalisation these should be near 0 and 1: a check, not a fix.
    metrics = {
        "n_latents": float(len(latents)),
        "latent_mean_abs_max": float(abs(mean).max()),
        "latent_std_min": float(std.min()),
        "latent_std_max": float(std.max()),
    }
    return StageResult(metrics, [out / "meta.json"])


def train_diffusion(cfg: Config, paths: Paths, tracker: Tracker, variant: str) -> StageResult:
    """Train LightningDiT on one variant's latents; release the EMA weights."""
    import numpy as np
    import torch

    from ldm import checkpoint
    from ldm.diffusion import create_model
    from ldm.diffusion.train import DiffusionRun, fit_diffusion
    from ldm.distributed import cleanup, init_distributed

    diff = cfg.diffusion
    folder = paths.latents(variant)
    if not (folder / "meta.json").is_file():
        raise DataError(f"{folder} holds no latents: run `ldm encode --variant {variant}` first")
    meta = json.loads((folder / "meta.json").read_text())
    latents = torch.from_numpy(np.load(folder / "latents.npy", allow_pickle=False))
    labels = torch.from_numpy(np.load(folder / "labels.npy", allow_pickle=False))
    # One class is an unconditional model: a label embedding would have nothing to tell apart.
    num_classes = meta["num_classes"] if meta["num_classes"] > 1 else 0
    device = pick_device(diff.device)
    dist = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    torch.manual_seed(diff.seed)
    channels, size = meta["shape"][0], meta["shape"][1]
    model = create_model(
        diff.model,
        channels,
        size,
        num_classes,
        swiglu=diff.swiglu,
        rmsnorm=diff.rmsnorm,
        rope=diff.rope,
        qk_norm=diff.qk_norm,
        class_dropout=diff.class_dropout,
    )
    tokenizer = released_tokenizer(paths, variant).to(device)
    run = DiffusionRun(
        model=model,
        cfg=diff,
        sample_cfg=cfg.sample,
        latents=latents,
        labels=labels,
        num_classes=num_classes,
        work_dir=paths.work(f"train_diffusion@{variant}"),
        fingerprint=checkpoint.fingerprint(
            {"diffusion": cfg.section("diffusion"), "latents": meta, "variant": variant}
        ),
        device=device,
        dist=dist,
        decode=tokenizer.decode,
    )
    try:
        with progress_bar(f"train_diffusion@{variant}", diff.steps) as advance:
            metrics = fit_diffusion(run, tracker, advance)
        if dist.is_main:
            checkpoint.save_release(
                paths.diffusion(variant),
                run.ema,
                {
                    "model": model.config,
                    "variant": variant,
                    "class_map": meta["class_map"],
                    "tokenizer": str(paths.tokenizer(variant).relative_to(paths.root)),
                    "steps": diff.steps,
                    "ema_decay": diff.ema_decay,
                },
            )
            shutil.rmtree(run.work_dir, ignore_errors=True)
    finally:
        cleanup()
    return StageResult(metrics, [paths.diffusion(variant) / "config.json"])


def released_tokenizer(paths: Paths, variant: str) -> Tokenizer:
    """The variant's tokenizer, or a DataError naming the stage that makes it."""
    try:
        return load_tokenizer(paths.tokenizer(variant))
    except FileNotFoundError:
        stage = "train-tokenizer" if variant == "plain" else "align-tokenizer"
        raise DataError(
            f"{paths.tokenizer(variant)} holds no released tokenizer: run `ldm {stage}` first"
        ) from None
