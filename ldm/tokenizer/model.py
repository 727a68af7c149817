"""The KL autoencoder: LDM/VQGAN's convolutional encoder-decoder without quantization.

Non-obvious choices:
- The layout follows LDM's `Encoder`/`Decoder` (ldm/modules/diffusionmodules/model.py) block for
  block, so parameter names and counts line up with LDM and diffusers' `AutoencoderKL`.
- No `quant_conv`/`post_quant_conv` 1x1 layers: the encoder's `conv_out` emits the moments
  (2d channels) directly and the decoder's `conv_in` reads d channels, as in VA-VAE's inference
  code and FLUX's AE. The VF loss's adaptive weight is taken on `encoder.conv_out`.
- GroupNorm keeps 32 groups when each holds at least `min_group_channels` channels (LDM's 32 on
  its narrowest, 128-channel layer is 4 each); narrower layers get fewer, larger groups.
- Attention uses `scaled_dot_product_attention` (single head over all channels, as LDM).
- The tokenizer owns its latent mean/std (buffers saved with the weights), so `encode`/`decode`
  speak normalised latents and no caller ever applies a scale or shift by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TokenizerArch:
    """Shape of the autoencoder; `attn_resolutions` are feature-map sides, as in LDM."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    latent_channels: int  # d
    resolution: int  # image side
    # 32 groups on a 32-channel layer are one channel each, an instance norm: it strips every
    # image's per-channel mean and scale, so the decoder's last layers cannot carry an image's
    # overall colour (f4d8 turned the sample's red cups brown: 45 % of the saturation lost,
    # 1.5 dB of PSNR). 4 is what LDM's 32 groups give its narrowest layer, so the f16 presets
    # keep LDM's groups exactly.
    min_group_channels: int = 4

    @property
    def downsample(self) -> int:
        """The spatial factor f between image and latent."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples become lists)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerArch:
        """Inverse of `to_dict`."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        # Saved before the field existed: those tokenizers were trained with one-channel groups
        # on narrow layers and must keep them to decode as they were trained.
        values.setdefault("min_group_channels", 1)
        return cls(**values)


_F16 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,))
PRESETS: dict[str, dict] = {
    # CPU trial size: 2 downsamples, no attention outside the mid block.
    "f4d8": dict(
        ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), latent_channels=8
    ),
    # VA-VAE's paper sizes (f16d32 is the released one).
    "f16d16": dict(_F16, latent_channels=16),
    "f16d32": dict(_F16, latent_channels=32),
    "f16d64": dict(_F16, latent_channels=64),
}


def arch_from_preset(
    name: str, resolution: int, latent_channels: int | None = None
) -> TokenizerArch:
    """The named preset at the given image side; `latent_channels` replaces its d if given."""
    if name not in PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r} (known: {', '.join(PRESETS)})")
    values = PRESETS[name] | ({"latent_channels": latent_channels} if latent_channels else {})
    return TokenizerArch(**values, resolution=resolution)


def num_groups(channels: int, min_group_channels: int) -> int:
    """The most GroupNorm groups, at most 32, that divide `channels` with at least
    `min_group_channels` channels each (1 group when the layer is narrower than that)."""
    most = max(1, min(32, channels // min_group_channels))
    return max(g for g in range(1, most + 1) if channels % g == 0)


def norm(channels: int, min_group_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels, min_group_channels), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm-SiLU-conv twice plus a skip (1x1 conv when the width changes); no time embedding."""

    def __init__(self, in_ch: int, out_ch: int, min_group_channels: int):
        super().__init__()
        self.norm1 = norm(in_ch, min_group_channels)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch, min_group_channels)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, out, H, W)
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual."""

    def __init__(self, ch: int, min_group_channels: int):
        super().__init__()
        self.norm = norm(ch, min_group_channels)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head whose width is all C channels.
        q, k, v = (p(y).reshape(b, 1, c, h * w).transpose(-1, -2) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv; LDM pads right/bottom only so that the output is exactly H/2."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no transposed conv, so no checkerboard)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


Resample = Literal["down", "up"] | None


class Level(nn.Module):
    """One resolution: res blocks (each optionally followed by attention), then an optional
    down- or upsampler; attribute names follow LDM's state dict."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        n: int,
        attn: bool,
        resample: Resample,
        min_group_channels: int,
    ):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, min_group_channels) for i in range(n)
        )
        self.attn = nn.ModuleList(AttnBlock(out_ch, min_group_channels) for _ in range(n) if attn)
        self.downsample = Downsample(out_ch) if resample == "down" else None
        self.upsample = Upsample(out_ch) if resample == "up" else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[i](h)
        if self.downsample is not None:
            h = self.downsample(h)
        if self.upsample is not None:
            h = self.upsample(h)
        return h


class MidBlock(nn.Module):
    """res-attn-res at the lowest resolution (attention always, as LDM)."""

    def __init__(self, ch: int, min_group_channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, min_group_channels)
        self.attn_1 = AttnBlock(ch, min_group_channels)
        self.block_2 = ResnetBlock(ch, ch, min_group_channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> Gaussian moments (B, 2d, H/f, W/f)."""

    def __init__(self, arch: TokenizerArch):
        super().__init__()
        widths = [arch.ch * m for m in arch.ch_mult]
        self.conv_in = nn.Conv2d(3, arch.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, in_ch = arch.resolution, arch.ch
        for i, out_ch in enumerate(widths):
            last = i == len(widths) - 1
            attn = res in arch.attn_resolutions
            resample = None if last else "down"
            self.down.append(
                Level(in_ch, out_ch, arch.num_res_blocks, attn, resample, arch.min_group_channels)
            )
            in_ch, res = out_ch, res if last else res // 2
        self.mid = MidBlock(in_ch, arch.min_group_channels)
        self.norm_out = norm(in_ch, arch.min_group_channels)
        self.conv_out = nn.Conv2d(in_ch, 2 * arch.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level(h)
        h = self.mid(h)  # (B, C_last, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2d, H/f, W/f)


class Decoder(nn.Module):
    """Latent (B, d, h, w) -> image (B, 3, h*f, w*f); num_res_blocks + 1 blocks per level."""

    def __init__(self, arch: TokenizerArch):
        super().__init__()
        widths = [arch.ch * m for m in arch.ch_mult]
        in_ch, res = widths[-1], arch.resolution // arch.downsample
        self.conv_in = nn.Conv2d(arch.latent_channels, in_ch, 3, padding=1)
        self.mid = MidBlock(in_ch, arch.min_group_channels)
        # Built deepest level first, but indexed like LDM: up[i] runs at the side of down[i].
        up: list[Level] = []
        for i in reversed(range(len(widths))):
            out_ch = widths[i]
            attn = res in arch.attn_resolutions
            resample = "up" if i > 0 else None
            blocks = arch.num_res_blocks + 1
            up.insert(0, Level(in_ch, out_ch, blocks, attn, resample, arch.min_group_channels))
            in_ch, res = out_ch, res * 2 if i > 0 else res
        self.up = nn.ModuleList(up)
        self.norm_out = norm(in_ch, arch.min_group_channels)
        self.conv_out = nn.Conv2d(in_ch, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, C_last, h, w)
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))) from the encoder's (B, 2d, h, w) moments."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, d, h, w) each
        # The clamp keeps exp() finite early in training (LDM's bounds).
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(
        self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reparameterised draw, differentiable in mean and logvar; `noise` is eps if given."""
        eps = noise
        if eps is None:
            eps = torch.randn(
                self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
            )
        return self.mean + self.std * eps  # (B, d, h, w)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over C, H, W; shape (B,)."""
        terms = self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar  # (B, d, h, w)
        return 0.5 * terms.sum(dim=(1, 2, 3))


class Tokenizer(nn.Module):
    """KL autoencoder that owns its latent statistics: `encode` and `decode` use normalised z."""

    def __init__(self, arch: TokenizerArch):
        super().__init__()
        if arch.resolution % arch.downsample:
            raise ValueError(
                f"resolution {arch.resolution} is not divisible by the downsampling factor "
                f"f={arch.downsample}"
            )
        self.arch = arch
        self.encoder = Encoder(arch)
        self.decoder = Decoder(arch)
        d = arch.latent_channels
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_std", torch.ones(d))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(d, resolution // f, resolution // f)."""
        side = self.arch.resolution // self.arch.downsample
        return (self.arch.latent_channels, side, side)

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the per-channel mean/std of raw latents, measured on the training set."""
        d = self.arch.latent_channels
        if mean.shape != (d,) or std.shape != (d,):
            got = f"{tuple(mean.shape)} and {tuple(std.shape)}"
            raise ValueError(f"latent stats must have shape ({d},), got {got}")
        if not bool((std > 0).all()):
            raise ValueError("latent std must be positive in every channel")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def _check_image(self, x: torch.Tensor) -> None:
        r, f = self.arch.resolution, self.arch.downsample
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, {r}, {r}), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % f or w % f or h != r or w != r:
            raise ValueError(
                f"image size {h}x{w} does not fit this tokenizer: it needs {r}x{r} "
                f"(its arch.resolution, divisible by f={f})"
            )

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"expected latents of shape (B, {', '.join(map(str, self.latent_shape))}), "
                f"got {tuple(z.shape)}"
            )

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latent_mean.view(1, -1, 1, 1), self.latent_std.view(1, -1, 1, 1)  # (1, d, 1, 1)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x) for images in [-1, 1], (B, 3, H, W)."""
        self._check_image(x)
        return DiagonalGaussian(self.encoder(x))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) latent (B, d, h, w) -> image (B, 3, H, W)."""
        self._check_latent(z)
        return self.decoder(z)

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Image in [-1, 1] -> normalised latent (z - mean) / std, (B, d, h, w)."""
        q = self.posterior(x)
        z = q.sample(generator) if sample else q.mode()  # (B, d, h, w)
        mean, std = self._stats()
        return (z - mean) / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> image, nominally in [-1, 1] (not clamped)."""
        mean, std = self._stats()
        return self.decode_raw(z * std + mean)  # (B, 3, H, W)

    def forward(
        self,
        x: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        latent_noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian, torch.Tensor]:
        """(reconstruction, posterior, raw latent z) for the training losses.

        `noise` (B, d, h, w) is the posterior draw's eps, drawn by the caller: a DDP rank takes
        its slice of the global batch's noise, and a compiled graph needs no generator.
        `latent_noise` (t (B,), e (B, d, h, w)) makes the decoder see (1 - t)·z + t·e instead of
        z (latent denoising, ldm/tokenizer/regularisers.py); z itself is returned clean.
        """
        q = self.posterior(x)
        z = q.sample(generator, noise) if sample else q.mode()  # (B, d, h, w)
        if latent_noise is None:
            return self.decoder(z), q, z
        t, e = latent_noise
        t = t.view(-1, 1, 1, 1).to(z.dtype)  # (B, 1, 1, 1)
        return self.decoder((1 - t) * z + t * e), q, z
