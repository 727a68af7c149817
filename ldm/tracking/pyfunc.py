"""A generator (tokenizer + LightningDiT + sampler settings) as an MLflow pyfunc model.

What the registry stores, `ldm serve` serves and `ldm sample --model` loads. One request row
(`class_id`, `n`, `seed`, optional `cfg_scale`, `steps`) gives `n` rows out, one per image, the
PNG base64-encoded so that the JSON scoring server can return it. The same seed gives the same
images (on the same kind of device: CUDA and CPU draw different noise).

The weights travel as safetensors next to their `config.json`; the model itself is saved as
"models from code" (`generator_model.py`), so loading a version never unpickles anything.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from ldm.config import SampleConfig

MODEL_CODE = Path(__file__).with_name("generator_model.py")
# One row out per image: column -> MLflow type.
OUTPUT_COLUMNS = {
    "class_id": "long",
    "class_name": "string",
    "seed": "long",
    "index": "long",
    "png": "string",
}
# What the bundled code imports at load time; pinned to the versions that saved the model.
REQUIREMENTS = ("mlflow", "torch", "numpy", "safetensors", "pydantic", "pyyaml", "pillow", "pandas")


class ImageGenerator(mlflow.pyfunc.PythonModel):
    """Rows of (class_id, n, seed[, cfg_scale, steps]) -> one row per image with its PNG."""

    def load_context(self, context: Any) -> None:
        from ldm.generate import load_diffusion
        from ldm.tokenizer.release import load_tokenizer
        from ldm.training.devices import pick_device

        self.device = pick_device("auto")
        self.model, config = load_diffusion(Path(context.artifacts["diffusion"]))
        # The bundled tokenizer, not the path in the DiT's config: a version pins its decoder.
        self.tokenizer = load_tokenizer(Path(context.artifacts["tokenizer"]))
        self.model_config = config["model"]
        self.class_map: dict[str, int] = config["class_map"]
        sampler = json.loads(Path(context.artifacts["sampler"]).read_text())
        self.sampler = SampleConfig.model_validate(sampler)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        import torch
        from PIL import Image

        from ldm.generate import draw

        names = {i: name for name, i in self.class_map.items()}
        rows = []
        for request in model_input.to_dict("records"):
            class_id, n, settings = self._read(request, names)
            labels = None
            if len(self.class_map) > 1:  # a single-class model is trained unconditionally
                labels = torch.full((n,), class_id, dtype=torch.long)
            images = draw(
                self.model, self.tokenizer, self.model_config, n, labels, settings, self.device
            )
            for index, image in enumerate(images):
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="PNG")
                png = base64.b64encode(buffer.getvalue()).decode("ascii")
                rows.append([class_id, names[class_id], settings.seed, index, png])
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))

    def _read(
        self, request: dict[str, Any], names: dict[int, str]
    ) -> tuple[int, int, SampleConfig]:
        """One request row checked: a known class, n >= 1, sampler overrides in range."""
        from pydantic import ValidationError

        class_id, n = int(request["class_id"]), int(request["n"])
        if class_id not in names:
            known = ", ".join(f"{i} ({name})" for i, name in sorted(names.items()))
            raise bad_request(
                f"class_id {class_id} is not a class of this model; use one of {known}"
            )
        if n < 1:
            raise bad_request(f"n must be at least 1, got {n}")
        overrides: dict[str, Any] = {"seed": int(request["seed"])}
        for key in ("cfg_scale", "steps"):
            value = request.get(key)
            if value is not None and not pd.isna(value):
                overrides[key] = value
        if "steps" in overrides:
            if float(overrides["steps"]) != int(overrides["steps"]):
                raise bad_request(f"steps must be a whole number, got {overrides['steps']}")
            overrides["steps"] = int(overrides["steps"])
        try:
            settings = SampleConfig.model_validate(self.sampler.model_dump() | overrides)
        except ValidationError as err:
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in err.errors())
            raise bad_request(problems) from None
        return class_id, n, settings


def bad_request(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400 and this message."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("long", "class_id"),
            ColSpec("long", "n"),
            ColSpec("long", "seed"),
            ColSpec("double", "cfg_scale", required=False),
            # double, not long: a missing value in a batch of rows makes the column float
            ColSpec("double", "steps", required=False),
        ]
    )
    outputs = Schema([ColSpec(kind, name) for name, kind in OUTPUT_COLUMNS.items()])
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    """Explicit pins: MLflow's inference would load the model and may reach the network."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")  # torch 2.x+cpu -> 2.x
        except PackageNotFoundError:
            pins.append(name)
    return pins


def save_generator(
    path: Path, tokenizer: Path, diffusion: Path, sampler: SampleConfig, mlflow_model: Any = None
) -> None:
    """Write the pyfunc model folder: weights, configs, sampler settings, code, signature."""
    import ldm

    with tempfile.TemporaryDirectory(prefix="ldm-generator-") as tmp:
        settings = Path(tmp) / "sampler.json"
        settings.write_text(json.dumps(sampler.model_dump(mode="json"), indent=2) + "\n")
        # The `ldm` code travels with the weights (code_paths). A version then stays loadable
        # by `mlflow models serve` after the code changes (a renamed layer, a new config key),
        # and on a host without ldm installed: the architecture that matches the weights is
        # the one saved beside them. In a process that already imported `ldm` (the CLI), the
        # running code is used instead; Python imports a package once.
        code = Path(tmp) / "ldm"
        shutil.copytree(
            Path(ldm.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__")
        )
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(MODEL_CODE),
            artifacts={
                "tokenizer": str(tokenizer),
                "diffusion": str(diffusion),
                "sampler": str(settings),
            },
            code_paths=[str(code)],
            signature=signature(),
            input_example=pd.DataFrame({"class_id": [0], "n": [1], "seed": [0]}),
            pip_requirements=pip_requirements(),
            mlflow_model=mlflow_model,
        )


def decode_png(text: str) -> Any:
    """A `png` cell of the output -> uint8 (H, W, 3)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image.convert("RGB"))


def sample_registered(generator: Any, n: int, class_text: str | None, seed: int) -> Any:
    """n images, uint8 (n, H, W, 3), from a loaded generator: one class (name or id) for all,
    or the classes in turn, each class drawn from `seed`."""
    import numpy as np

    from ldm.generate import class_id

    class_map = generator.unwrap_python_model().class_map
    if class_text is not None:
        order = [class_id(class_text, class_map)] * n
    else:
        ids = sorted(class_map.values())
        order = [ids[i % len(ids)] for i in range(n)]
    counts = {c: order.count(c) for c in dict.fromkeys(order)}
    rows = pd.DataFrame({"class_id": list(counts), "n": list(counts.values()), "seed": seed})
    out = generator.predict(rows).sort_values(["class_id", "index"])
    pngs = {c: iter(out.png[out.class_id == c]) for c in counts}  # each class's, in index order
    return np.stack([decode_png(next(pngs[c])) for c in order])
