"""Loss pieces shared by the tokenizer's objectives: the reconstruction loss d, the adaptive
weights of the VF and GAN losses."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Reduce = Callable[[torch.Tensor], torch.Tensor]


def gradient_norm_ratio(
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    layer_weight: torch.Tensor,
    max_value: float,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """‖∂numerator/∂W‖ / (‖∂denominator/∂W‖ + 1e-4) on one layer's weight W, clamped, detached.

    VQGAN balances its GAN loss this way on the decoder's last layer; VA-VAE balances the VF loss
    the same way on the encoder's last layer, so that a loss of a very different scale pulls on
    the shared weights about as hard as the reconstruction loss does.
    `reduce` averages each gradient over the DDP ranks before its norm is taken, so that every
    rank uses the one weight a single process would compute for the global batch.
    """
    grad_num = torch.autograd.grad(numerator, layer_weight, retain_graph=True)[0]
    grad_den = torch.autograd.grad(denominator, layer_weight, retain_graph=True)[0]
    if reduce is not None:
        grad_num, grad_den = reduce(grad_num), reduce(grad_den)
    ratio = grad_num.norm() / (grad_den.norm() + 1e-4)
    return ratio.clamp(0.0, max_value).detach()


def reconstruction_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    perceptual_weight: float,
    side: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rec, L1, perceptual) of images (B, 3, h, w): rec = L1 + perceptual_weight·perceptual.

    Images smaller than the training size `side` (the equivariance term's tau(x), 8 x 8 and
    less) are brought back to it, bilinear, for the perceptual term alone: LPIPS-VGG's four
    poolings leave nothing of an 8 x 8 image (the EfficientNet distance upsamples them itself).
    """
    l1 = (recon.float() - x).abs().mean()
    distance = perceptual(recon, x) if perceptual and recon.shape[-1] >= side else None
    if perceptual and distance is None:
        up = {"size": (side, side), "mode": "bilinear", "align_corners": False}
        distance = perceptual(F.interpolate(recon, **up), F.interpolate(x, **up))
    distance = distance.mean() if distance is not None else torch.zeros(())
    return l1 + perceptual_weight * distance.to(l1.device), l1, distance
