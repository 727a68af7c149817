"""How good a trained tokenizer is: reconstruction quality and closeness to foundation features.

Reconstructions use the posterior mean (no sampling noise), as the paper's rFID/PSNR tables do.
Every number is named after the network that measured it, so numbers measured in different
spaces are never compared by accident. The perceptual distance is measured in a network the
training never saw (`ldm.pretrained.perceptual.load_perceptual_metric`), never in its loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ldm.data.batches import to_model_range
from ldm.metrics.frechet import RunningMoments, frechet_distance, metric_name
from ldm.metrics.pixels import psnr, ssim
from ldm.pretrained.base import FeatureNet, FoundationEncoder, PerceptualDistance
from ldm.progress import progress_bar
from ldm.tokenizer.align import cka_from_covariance
from ldm.tokenizer.model import Tokenizer

if TYPE_CHECKING:
    from ldm.data.shards import ShardedArray


@torch.no_grad()
def latent_statistics(
    model: Tokenizer, images: np.ndarray | ShardedArray, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the posterior means over uint8 NHWC `images`.

    Converted batch by batch: the whole train split as float32 would not fit in memory at
    256 px.
    """
    model.eval()
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start : start + batch_size]).to(device)  # (B, 3, H, W)
        z = model.posterior(x).mode().double()
        total = total + z.sum(dim=(0, 2, 3))
        total_sq = total_sq + z.pow(2).sum(dim=(0, 2, 3))
        count += z.shape[0] * z.shape[2] * z.shape[3]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.float().cpu(), std.float().cpu()


@torch.no_grad()
def measure_reconstruction(
    model: Tokenizer,
    images: np.ndarray | ShardedArray,
    device: torch.device,
    batch_size: int,
    perceptual_metric: PerceptualDistance,
    eval_net: FeatureNet,
    real_stats: tuple[np.ndarray, np.ndarray],
    foundation: FoundationEncoder,
) -> dict[str, float]:
    """psnr, ssim, perceptual_<net>, rfd_<net> and cka_<foundation> over uint8 NHWC `images`.

    `real_stats` are the mean and covariance of `images` in `eval_net`'s space, as the reference
    stage measured them: the rFD sets reconstructions against them.
    Batch by batch, keeping per-image scores and running moments only: the features of a large
    val split (a foundation map per image) would not fit in memory.
    `ldm.records.TokenizerQuality.from_metrics` reads this dict back as a typed record.
    """
    model.eval()
    grid = model.latent_shape[1:]
    psnrs, ssims, dists = [], [], []
    fake, joint = RunningMoments(), RunningMoments()
    with progress_bar("reconstruction quality", len(images)) as advance:
        for start in range(0, len(images), batch_size):
            x = to_model_range(images[start : start + batch_size]).to(device)  # (B, 3, H, W)
            z = model.posterior(x).mode()  # (B, d, h, w)
            recon = model.decode_raw(z).float().clamp(-1, 1)
            psnrs.append(psnr(recon, x).cpu())
            ssims.append(ssim(recon, x).cpu())
            dists.append(perceptual_metric(recon, x).double().cpu())
            fake.add(eval_net(recon))
            feats = foundation(x, grid).float()  # (B, C, h, w)
            # One row per latent position: [latent channels, feature channels].
            joint.add(torch.cat([z.float(), feats], dim=1).permute(0, 2, 3, 1).flatten(0, 2))
            advance(len(x))
    return {
        "psnr": torch.cat(psnrs).mean().item(),
        "ssim": torch.cat(ssims).mean().item(),
        f"perceptual_{perceptual_metric.name}": torch.cat(dists).mean().item(),
        "r" + metric_name(eval_net.name): frechet_distance(*real_stats, *fake.stats()),
        f"cka_{foundation.name}": cka_from_covariance(joint.stats()[1], model.latent_shape[0]),
    }
