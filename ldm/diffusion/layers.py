"""Blocks of LightningDiT: DiT's adaLN-Zero block with switchable SwiGLU, RMSNorm, 2D RoPE, QK-norm.

Shapes: B batch, T tokens, D width, H heads, K head width (D / H), P patch values (p·p·C).

Non-obvious choices:
- The timestep embedder sees 1000·t. SiT/LightningDiT feed t in [0, 1] straight into DiT's
  sinusoid, where even the fastest frequency turns less than one period over the whole range;
  scaling to DiT's original [0, 1000] range (as FLUX does) gives the MLP sharp time features.
- 2D axial RoPE as in EVA-02 (LightningDiT's `VisionRotaryEmbeddingFast`): channels pair up
  (2j, 2j + 1); the first half of each head's pairs rotate with the token's row, the second half
  with its column, theta 10000. In eager mode the rotation is one complex multiply (on CPU about
  a third of the cost of EVA's rotate-half form, whose slices and concatenations copy); under
  torch.compile, which cannot generate code for complex ops, the same rotation in real arithmetic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x·(1 + scale) + shift, with (B, 1, D) modulation broadcast over tokens."""
    return torch.addcmul(shift, x, 1 + scale)  # (B, T, D)


def make_norm(width: int, rmsnorm: bool) -> nn.Module:
    """RMSNorm with a learned weight (LightningDiT) or DiT's affine-free LayerNorm."""
    if rmsnorm:
        return nn.RMSNorm(width, eps=1e-6)
    return nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)


def sincos_pos_embed(width: int, grid: int) -> Tensor:
    """Fixed 2D sin-cos position embedding (DiT/MAE): half the channels per axis."""
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def axis(p: Tensor) -> Tensor:
        angles = p.reshape(-1, 1) * omega  # (T, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (T, D/2)

    return torch.cat([axis(rows), axis(cols)], dim=1).float()  # (T, D)


def rope_table(head_dim: int, grid: int, theta: float = 10000.0) -> Tensor:
    """(cos, sin) of 2D axial RoPE per token and channel pair for a grid×grid map: (T, K/2, 2)."""
    freqs = theta ** (-torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim / 4))
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")
    rows, cols = rows.reshape(-1, 1), cols.reshape(-1, 1)
    angles = torch.cat([rows * freqs, cols * freqs], dim=1)  # (T, K/2): row pairs, column pairs
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()  # (T, K/2, 2)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate each channel pair (2j, 2j + 1) of x (..., T, K) by its token's angle, in fp32."""
    pairs, table = x.float().unflatten(-1, (-1, 2)), table.float()  # (..., T, K/2, 2), (T, K/2, 2)
    if torch.compiler.is_compiling():
        (x0, x1), (cos, sin) = pairs.unbind(-1), table.unbind(-1)  # (..., T, K/2), (T, K/2)
        rotated = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    else:
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(table))
    return rotated.flatten(-2).to(x.dtype)  # (..., T, K)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of 1000·t followed by DiT's two-layer MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        args = 1000 * t.float()[:, None] * freqs  # (B, F/2)
        emb = torch.cat([args.cos(), args.sin()], dim=-1)  # (B, F), fp32 for precise angles
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (B, D)


class LabelEmbedder(nn.Module):
    """Class embedding with one extra null row (id = num_classes) for classifier-free guidance."""

    def __init__(self, num_classes: int, width: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.table = nn.Embedding(num_classes + 1, width)

    def forward(self, y: Tensor) -> Tensor:
        if self.training and self.dropout > 0:
            # Training sees the null class as often as CFG needs it to learn p(x).
            drop = torch.rand(y.shape, device=y.device) < self.dropout
            y = torch.where(drop, self.num_classes, y)
        return self.table(y)  # (B, D)


class Attention(nn.Module):
    """Multi-head self-attention: fused qkv, optional QK-norm and 2D RoPE, SDPA."""

    def __init__(self, width: int, heads: int, qk_norm: bool, rmsnorm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        head_dim = width // heads
        # LightningDiT normalises q and k per head with the same kind of norm as the block, learned.
        norm = nn.RMSNorm if rmsnorm else nn.LayerNorm
        self.q_norm = norm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = norm(head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, rope: Tensor | None) -> Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, D // self.heads)  # (B, T, 3, H, K)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, K)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)  # (B, H, T, K)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, K)
        return self.proj(x.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class SwiGLU(nn.Module):
    """SwiGLU FFN with a fused input projection; hidden = 2/3 of DiT's 4·D keeps DiT's FLOPs."""

    def __init__(self, width: int):
        super().__init__()
        hidden = int(2 / 3 * 4 * width)
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.w3(F.silu(x1) * x2)  # (B, T, D)


class MLP(nn.Module):
    """DiT's FFN: 4·D hidden, tanh-approximated GELU."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # (B, T, D)


class Block(nn.Module):
    """DiT block with adaLN-Zero: shift, scale and gate for attention and FFN from the condition."""

    def __init__(self, width: int, heads: int, swiglu: bool, rmsnorm: bool, qk_norm: bool):
        super().__init__()
        self.norm1 = make_norm(width, rmsnorm)
        self.attn = Attention(width, heads, qk_norm, rmsnorm)
        self.norm2 = make_norm(width, rmsnorm)
        self.mlp = SwiGLU(width) if swiglu else MLP(width)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor, rope: Tensor | None) -> Tensor:
        mod = self.adaLN_modulation(c).unsqueeze(1)  # (B, 1, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)  # (B, 1, D) each
        x = torch.addcmul(x, gate1, self.attn(modulate(self.norm1(x), shift1, scale1), rope))
        return torch.addcmul(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


class FinalLayer(nn.Module):
    """Norm, adaLN shift/scale, and a linear map from width to one patch of velocity."""

    def __init__(self, width: int, patch_values: int, rmsnorm: bool):
        super().__init__()
        self.norm_final = make_norm(width, rmsnorm)
        self.linear = nn.Linear(width, patch_values)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, D) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, P)
