"""The VQGAN (taming-transformers) PatchGAN, its hinge loss and the adaptive GAN weight.

Non-obvious choices, all as in taming's `NLayerDiscriminator` and `VQLPIPSWithDiscriminator`:
- kernel 4 with padding 1: three stride-2 convs and two stride-1 convs map 32 px to a 2x2 patch
  map and 256 px to 30x30, which needs at least 24 px; smaller images get fewer layers
  (`layers_for`), so a 16 px trial can switch the GAN on too.
- BatchNorm, so convs before a norm carry no bias; N(0, 0.02) weights, BatchNorm gammas N(1, 0.02).
- The GAN term is scaled by ‖∇ rec‖ / ‖∇ gan‖ on the decoder's last layer, clamped and detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.tokenizer.losses import Reduce, gradient_norm_ratio


def weights_init(m: nn.Module) -> None:
    """taming's init: conv weights N(0, 0.02), BatchNorm gammas N(1, 0.02) and betas 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def layers_for(resolution: int) -> int:
    """taming's 3 layers, or as many as keep at least one patch: H / 2^n - 2 >= 1."""
    n = 3
    while n > 1 and resolution / 2**n - 2 < 1:
        n -= 1
    return n


class NLayerDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per overlapping patch (70x70 px receptive field at n=3)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden conv keeps the resolution
            layers += [
                nn.Conv2d(
                    ndf * prev, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=False
                ),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)  # (B, 3, H, W) -> (B, 1, H/8 - 2, W/8 - 2)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's (decoder's) GAN loss: -E[D(fake)]."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    decoder_last_layer_weight: torch.Tensor,
    max_value: float = 1e4,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """‖∂rec/∂W‖ / (‖∂g/∂W‖ + 1e-4) on the decoder's last layer W, clamped to [0, max], detached."""
    return gradient_norm_ratio(rec_loss, g_loss, decoder_last_layer_weight, max_value, reduce)
