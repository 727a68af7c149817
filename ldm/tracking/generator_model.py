"""The file MLflow runs to load a registered generator ("models from code": no pickle).

MLflow copies this file into each saved model and executes it at load time; the `ldm` package
it imports travels with the model (see `save_generator`).
"""

import mlflow

from ldm.tracking.pyfunc import ImageGenerator

mlflow.models.set_model(ImageGenerator())
