"""LightningDiT: DiT (adaLN-Zero) with the LightningDiT changes, each a constructor switch.

The switch defaults are LightningDiT's choices (paper.md §2.2): SwiGLU FFN, RMSNorm with learned
weight, 2D RoPE on q/k (the fixed sin-cos position embedding is still added), QK-norm off, class
dropout 0.1, no learned sigma. `create_model("XL/1", 32, 16, 1000)` has the reference's 675.26 M
parameters: like the reference we count the frozen position embedding and the null class row.

Conventions: the model maps latents x (B, C, H, W), times t in [0, 1] (B,) and labels y (B,) to a
velocity of x's shape (see `flow.py` for what t means). Label id `num_classes` is the null class;
`num_classes=0` is an unconditional model with no label embedding at all.

Only torch is imported here, so the model runs on a bare GPU host.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldm.diffusion.layers import (
    Block,
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    rope_table,
    sincos_pos_embed,
)


class LightningDiT(nn.Module):
    """Diffusion transformer predicting flow-matching velocity from (x_t, t, y)."""

    def __init__(
        self,
        latent_channels: int,
        latent_size: int,
        num_classes: int,
        depth: int,
        width: int,
        heads: int,
        patch: int,
        swiglu: bool = True,
        rmsnorm: bool = True,
        rope: bool = True,
        qk_norm: bool = False,
        class_dropout: float = 0.1,
    ):
        super().__init__()
        if latent_size % patch:
            raise ValueError(f"latent_size {latent_size} is not a multiple of patch {patch}")
        if width % heads or (width // heads) % 4 or width % 4:
            raise ValueError(f"width {width} / heads {heads} must give a head width divisible by 4")
        if num_classes < 0 or not 0 <= class_dropout < 1:
            raise ValueError(
                f"need num_classes >= 0, 0 <= class_dropout < 1: {num_classes=}, {class_dropout=}"
            )
        self.latent_channels, self.latent_size, self.patch = latent_channels, latent_size, patch
        self.num_classes = num_classes
        self.switches = dict(
            swiglu=swiglu, rmsnorm=rmsnorm, rope=rope, qk_norm=qk_norm, class_dropout=class_dropout
        )
        self.config: dict = {}  # filled by create_model: the kwargs that rebuild this model
        grid = latent_size // patch

        # Patchify is a reshape, so the patch embedding is a Linear (same parameters as DiT's conv).
        self.x_embedder = nn.Linear(latent_channels * patch * patch, width)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(num_classes, width, class_dropout) if num_classes else None
        # A frozen Parameter (not a buffer) as in DiT: it is in the state dict and the param count.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, width), requires_grad=False)
        # Derived from the shape alone, so not saved; (T, K/2, 2) cos and sin per channel pair.
        table = rope_table(width // heads, grid) if rope else None
        self.register_buffer("rope", table, persistent=False)
        self.blocks = nn.ModuleList(
            Block(width, heads, swiglu, rmsnorm, qk_norm) for _ in range(depth)
        )
        self.final_layer = FinalLayer(width, patch * patch * latent_channels, rmsnorm)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation; the adaLN-Zero and output zeros make the initial model output 0."""

        # Xavier-uniform for every linear layer (the patch embedding included), zero biases.
        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(basic_init)
        self.pos_embed.data.copy_(sincos_pos_embed(self.pos_embed.shape[-1], self.grid))
        # Small normal init for the condition embedders, as in DiT.
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # Zero the adaLN modulation: every block starts as the identity (gates are 0).
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # Zero the output layer: the initial velocity is exactly 0.
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.latent_size // self.patch

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) latents to (B, T, p·p·C) patch tokens, row-major."""
        B, C, p, g = x.shape[0], self.latent_channels, self.patch, self.grid
        x = x.reshape(B, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1)  # (B, g, g, p, p, C)
        return x.reshape(B, g * g, p * p * C)  # (B, T, P)

    def unpatchify(self, x: Tensor) -> Tensor:
        """Inverse of patchify: (B, T, p·p·C) to (B, C, H, W)."""
        B, C, p, g = x.shape[0], self.latent_channels, self.patch, self.grid
        x = x.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
        return x.reshape(B, C, g * p, g * p)  # (B, C, H, W)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Velocity at latents x (B, C, H, W), times t (B,), labels y (B,) (None: unconditional)."""
        if x.shape[1:] != (self.latent_channels, self.latent_size, self.latent_size):
            raise ValueError(
                f"expected latents (B, {self.latent_channels}, {self.latent_size}, "
                f"{self.latent_size}), got {tuple(x.shape)}"
            )
        x = self.x_embedder(self.patchify(x)) + self.pos_embed  # (B, T, D)
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            if y is None:
                raise ValueError("a class-conditional model needs labels y (null id: num_classes)")
            c = c + self.y_embedder(y)  # (B, D)
        for block in self.blocks:
            x = block(x, c, self.rope)  # (B, T, D)
        return self.unpatchify(self.final_layer(x, c))  # (B, C, H, W)


# Sizes (paper.md §2.2; S is DiT's). "T" (tiny) is ours: the 1.3 M-parameter DiT that a two-core
# CPU trains in minutes (calibration.md), for tests and CPU trials.
_SHAPES = {
    "T": dict(depth=4, width=128, heads=4),
    "S": dict(depth=12, width=384, heads=6),
    "B": dict(depth=12, width=768, heads=12),
    "L": dict(depth=24, width=1024, heads=16),
    "XL": dict(depth=28, width=1152, heads=16),
}
SIZES: dict[str, dict[str, int]] = {
    f"{name}/{patch}": {**shape, "patch": patch}
    for name, shape in _SHAPES.items()
    for patch in (1, 2)
}


def create_model(
    name: str, latent_channels: int, latent_size: int, num_classes: int, **switches: object
) -> LightningDiT:
    """Build a registered size: create_model("XL/1", 32, 16, 1000); model.config rebuilds it."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; choose from {sorted(SIZES)}")
    model = LightningDiT(latent_channels, latent_size, num_classes, **SIZES[name], **switches)
    model.config = dict(
        name=name,
        latent_channels=latent_channels,
        latent_size=latent_size,
        num_classes=num_classes,
        **model.switches,
    )
    return model
