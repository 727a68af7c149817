"""LightningDiT and rectified flow: the model, the flow-matching objective, and the ODE sampler."""

from ldm.diffusion.model import SIZES, LightningDiT, create_model

__all__ = ["SIZES", "LightningDiT", "create_model"]
