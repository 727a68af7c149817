"""Loss pieces shared by the tokenizer's objectives and the alignment (VF) loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

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
