"""VA-VAE's VF loss: align the tokenizer's latent with a frozen vision foundation model.

Formulas follow the paper (Eq. 1-5; digest §1.1); the frozen encoders aligned to live in
`ldm.pretrained.foundation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.tokenizer.losses import Reduce, gradient_norm_ratio

__all__ = [
    "VFProjection",
    "adaptive_vf_weight",
    "cka_from_covariance",
    "marginal_cosine_loss",
    "marginal_distance_matrix_loss",
    "vf_loss",
]


def _check_pair(z: torch.Tensor, f: torch.Tensor) -> None:
    """Both maps must be (B, C, H, W) of one shape: the projection must match the features."""
    if z.ndim != 4 or z.shape != f.shape:
        raise ValueError(
            f"VF loss needs equal (B, C, H, W) maps, got {tuple(z.shape)} and {tuple(f.shape)}"
        )


def marginal_cosine_loss(z: torch.Tensor, f: torch.Tensor, margin: float) -> torch.Tensor:
    """L_mcos = mean over batch and positions of ReLU(1 - m1 - cos(z_ij, f_ij)) (paper Eq. 2)."""
    _check_pair(z, f)
    cos = F.cosine_similarity(z, f, dim=1)  # (B, H, W), over channels
    return F.relu(1.0 - margin - cos).mean()


def marginal_distance_matrix_loss(z: torch.Tensor, f: torch.Tensor, margin: float) -> torch.Tensor:
    """L_mdms = mean over batch and N² pairs of ReLU(|cos(z_i,z_j) - cos(f_i,f_j)| - m2) (Eq. 3)."""
    _check_pair(z, f)
    zn = F.normalize(z.flatten(2), dim=1)  # (B, C, N), unit vectors per position
    fn = F.normalize(f.flatten(2), dim=1)  # (B, C, N)
    gram_z = torch.einsum("bci,bcj->bij", zn, zn)  # (B, N, N)
    gram_f = torch.einsum("bci,bcj->bij", fn, fn)  # (B, N, N)
    return F.relu((gram_z - gram_f).abs() - margin).mean()


class VFProjection(nn.Module):
    """The paper's W (Eq. 1): a bias-free 1x1 conv from latent channels d to feature channels C_f.

    Applied to the sampled latent, as VA-VAE's `reverse_proj: true` does.
    """

    def __init__(self, latent_channels: int, feature_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(latent_channels, feature_dim, kernel_size=1, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) -> (B, C_f, h, w)."""
        return self.proj(z)


def vf_loss(
    z_proj: torch.Tensor,
    f: torch.Tensor,
    cos_margin: float,
    distmat_margin: float,
    cos_weight: float,
    distmat_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """cos_weight·L_mcos + distmat_weight·L_mdms, and both parts as floats for logging."""
    f = f.to(z_proj.dtype)
    mcos = marginal_cosine_loss(z_proj, f, cos_margin)
    mdms = marginal_distance_matrix_loss(z_proj, f, distmat_margin)
    total = cos_weight * mcos + distmat_weight * mdms
    parts = torch.stack([mcos, mdms, total]).detach().tolist()  # one device sync, not three
    return total, dict(zip(("vf_mcos", "vf_mdms", "vf"), parts, strict=True))


def adaptive_vf_weight(
    rec_loss: torch.Tensor,
    vf_loss: torch.Tensor,
    encoder_last_layer_weight: torch.Tensor,
    max_value: float,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """‖∇L_rec‖ / ‖∇L_vf‖ on the encoder's last layer weight, clamped to [0, max], detached (Eq. 4).

    The encoder's last layer is the deepest weight both losses share: the VF loss never reaches
    the decoder, so VQGAN's decoder-side ratio would be zero here.
    """
    return gradient_norm_ratio(rec_loss, vf_loss, encoder_last_layer_weight, max_value, reduce)


def cka_from_covariance(cov: torch.Tensor, dim_x: int) -> float:
    """Linear CKA of row sets x (N, D1) and y (N, D2), ‖YᵀX‖²_F / (‖XᵀX‖_F·‖YᵀY‖_F) of the
    centred rows, from their joint covariance (D1 + D2, D1 + D2), x the first `dim_x` columns:
    the rows themselves need never be held at once."""
    cov = torch.as_tensor(cov, dtype=torch.float64)
    cross = torch.linalg.matrix_norm(cov[dim_x:, :dim_x]) ** 2  # ‖YᵀX‖²_F up to (N - 1)²
    denom = torch.linalg.matrix_norm(cov[:dim_x, :dim_x]) * torch.linalg.matrix_norm(
        cov[dim_x:, dim_x:]
    )
    if denom == 0:
        return 0.0  # a constant side shares no variance with anything
    return (cross / denom).item()
