"""`python -m ldm ...` (and `torchrun -m ldm train-diffusion ...` for several GPUs)."""

from ldm.cli import app

app()
