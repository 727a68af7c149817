"""ldm-poc: proof-of-concept trials of latent diffusion (VA-VAE + LightningDiT) on your images.

Importing `ldm` imports no heavy library. It does switch off the usage telemetry of the tools the
pipeline drives (Prefect, MLflow, DVC, GX): trials run on company data, often offline, and the
variables are inherited by every process a stage starts (`dvc repro`, workers, the MLflow UI).
"""

import os

__version__ = "0.1.0"

for _name, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "ITERATIVE_DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_name, _value)
