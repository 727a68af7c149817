"""The paper's tokenizer ablation, shown beside the trial's numbers for orientation only.

Source: Yao, Yang, Wang, "Reconstruction vs. Generation: Taming Optimization Dilemma in Latent
Diffusion Models", CVPR 2025, arXiv 2501.01423v3, Table 2. Tokenizers trained 50 epochs on
ImageNet at 256 px; rFID and PSNR on ImageNet val; gFID is FID-10K without guidance of
LightningDiT-B after 160 epochs (L and XL after 80). These are Inception FIDs on ImageNet: a
different feature network, different images and far more compute than a trial, so their values
cannot be compared with ours, only the direction of the trade-off.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_SOURCE = "Yao et al., CVPR 2025 (arXiv 2501.01423), Table 2"
PAPER_SETUP = (
    "ImageNet 256 px, Inception FID: rFID on the val set, gFID = FID-10K without guidance of "
    "LightningDiT-B after 160 epochs"
)


@dataclass(frozen=True)
class PaperTokenizer:
    spec: str  # f16d16: downsampling 16, 16 latent channels
    alignment: str  # "none", "MAE" or "DINOv2": the foundation model of the VF loss
    rfid: float
    psnr: float
    gfid_b: float  # LightningDiT-B, 160 epochs
    gfid_l: float  # LightningDiT-L, 80 epochs
    gfid_xl: float  # LightningDiT-XL, 80 epochs

    @property
    def label(self) -> str:
        return self.spec if self.alignment == "none" else f"{self.spec}+VF({self.alignment})"


TABLE_2 = (
    PaperTokenizer("f16d16", "none", 0.49, 26.10, 16.24, 9.49, 8.28),
    PaperTokenizer("f16d16", "MAE", 0.51, 26.01, 16.86, 10.93, 9.19),
    PaperTokenizer("f16d16", "DINOv2", 0.55, 25.29, 15.79, 10.02, 8.71),
    PaperTokenizer("f16d32", "none", 0.26, 28.59, 22.62, 12.86, 10.92),
    PaperTokenizer("f16d32", "MAE", 0.28, 28.33, 19.89, 11.51, 9.92),
    PaperTokenizer("f16d32", "DINOv2", 0.28, 27.96, 15.82, 9.82, 8.22),
    PaperTokenizer("f16d64", "none", 0.17, 31.03, 36.83, 20.73, 17.24),
    PaperTokenizer("f16d64", "MAE", 0.15, 31.03, 23.58, 14.40, 11.69),
    PaperTokenizer("f16d64", "DINOv2", 0.14, 30.71, 24.00, 14.95, 11.98),
)
