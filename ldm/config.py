"""The one typed config: pydantic models that mirror `params.yaml` section by section.

`load(path, overrides)` reads the YAML, applies `section.key=value` overrides and validates the
result. Any unknown key, missing key or wrong type raises `ConfigError` naming the key, before a
stage does any work. Defaults live nowhere else: `params.yaml` spells out every value, and a test
keeps it in step with these models, so DVC tracks everything that changes a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    raw_dir: Path  # the company's images, relative to the project root; sub-folders = classes
    resolution: int = Field(ge=8, le=4096)  # side of the square images the models see
    val_fraction: float = Field(gt=0.0, lt=1.0)  # share of images held out, split by content hash
    workers: int = Field(ge=0)  # decode processes for validate and prepare; 0 = one per CPU core


class ValidateConfig(Section):
    min_side: int = Field(ge=1)  # smaller images are rejected: they cannot be cropped to size
    max_pixels: int = Field(ge=1)  # larger images are refused before decoding (decompression bombs)
    min_images: int = Field(ge=1)  # fewer accepted images fail the data-quality suite
    min_accepted_fraction: float = Field(ge=0.0, le=1.0)
    min_images_per_class: int = Field(ge=1)


class PrepareConfig(Section):
    shard_size: int = Field(ge=1)  # images per .npy shard


class TokenizerConfig(Section):
    """The KL-VAE and how `train_tokenizer` trains it (`align_tokenizer` reuses the optimiser)."""

    preset: Literal[
        "f4d8", "f16d16", "f16d32", "f16d64"
    ]  # architecture, see ldm/tokenizer/model.py
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    betas: tuple[float, float]
    warmup_steps: int = Field(ge=0)
    lr_schedule: Literal["constant", "cosine"]
    kl_weight: float = Field(ge=0.0)
    perceptual: Literal[
        "effnet_lite0", "lpips_vgg", "none"
    ]  # the network behind the perceptual loss
    perceptual_weight: float = Field(ge=0.0)
    lpips_vgg_weights: Path | None  # local torchvision VGG16 weights, needed for lpips_vgg
    disc_weight: float = Field(ge=0.0)  # 0 switches the PatchGAN off
    disc_start: int = Field(ge=0)  # step at which the GAN loss starts
    eval_every: int = Field(ge=1)  # steps between validation losses and a reconstruction grid
    checkpoint_every: int = Field(ge=1)
    grid_images: int = Field(ge=1)  # originals shown over their reconstructions
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["fp32", "bf16"]  # bf16 autocast, CUDA only
    compile: bool  # torch.compile, CUDA only
    channels_last: bool


class AlignPhase(Section):
    steps: int = Field(ge=1)
    vf_weight: float = Field(ge=0.0)  # w_hyper, times the adaptive weight
    use_margins: bool  # False: margins 0, the paper's first, "align hard" phase


class AlignConfig(Section):
    """VA-VAE's alignment tuning: the VF loss against a frozen vision foundation model."""

    init: Literal["plain", "scratch"]  # start from the plain tokenizer's checkpoint, or not
    foundation: Literal["effnet_lite0", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14"]
    foundation_weights: Path | None  # local checkpoint file, needed for the dinov2 models
    foundation_sha256: str | None  # checked when given
    phases: list[AlignPhase] = Field(min_length=1)
    cos_margin: float = Field(ge=0.0, le=2.0)  # m1
    distmat_margin: float = Field(ge=0.0, le=2.0)  # m2
    cos_weight: float = Field(ge=0.0)
    distmat_weight: float = Field(ge=0.0)
    adaptive_max: float = Field(gt=0.0)  # clamp of the adaptive weight


class DiffusionConfig(Section):
    """LightningDiT on cached latents (train_diffusion)."""

    model: str = Field(pattern=r"^(T|S|B|L|XL)/[12]$")  # size/patch, see ldm/diffusion/model.py
    swiglu: bool
    rmsnorm: bool
    rope: bool
    qk_norm: bool
    class_dropout: float = Field(ge=0.0, lt=1.0)  # labels dropped to the null class, for CFG
    steps: int = Field(ge=1)  # optimiser steps
    batch_size: int = Field(ge=1)  # global batch per optimiser step, over all processes
    micro_batch_size: int = Field(ge=1)  # per forward pass; the rest is gradient accumulation
    lr: float = Field(gt=0.0)
    betas: tuple[float, float]
    weight_decay: float = Field(ge=0.0)
    warmup_steps: int = Field(ge=0)
    lr_schedule: Literal["constant", "cosine"]
    ema_decay: float = Field(ge=0.0, lt=1.0)
    grad_clip: float = Field(ge=0.0)  # max gradient norm; 0 = no clipping
    t_sampling: Literal["uniform", "logit_normal"]
    cos_weight: float = Field(ge=0.0)  # the velocity-direction loss
    on_non_finite: Literal["stop", "rollback"]  # rollback: reload the last checkpoint, go on
    checkpoint_every: int = Field(ge=1)
    sample_every: int = Field(ge=1)  # steps between sample grids logged to MLflow
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["fp32", "bf16"]
    compile: bool


class SampleConfig(Section):
    """The ODE sampler used for grids, `ldm sample` and evaluation."""

    steps: int = Field(ge=1)
    solver: Literal["euler", "heun"]
    cfg_scale: float = Field(ge=1.0)  # 1 = no guidance
    cfg_interval: tuple[float, float]  # guidance only for t in this range (t = 1 is noise)
    shift: float = Field(gt=0.0)  # time-grid shift s; 1 = uniform, < 1 more steps near noise
    batch_size: int = Field(ge=1)
    seed: int


class EvaluateConfig(Section):
    """How reconstructions (and later samples) are measured."""

    features: Literal["effnet_lite2", "inception", "dinov2_vitl14"]  # space of the Frechet distance
    features_weights: Path | None  # local weights for inception / dinov2
    batch_size: int = Field(ge=1)


class TrackingConfig(Section):
    experiment: str = Field(min_length=1)  # MLflow experiment that holds the trial's runs


class CostConfig(Section):
    gpu_hour_usd: float = Field(ge=0.0)  # price of one GPU-hour on the host that trains
    cpu_hour_usd: float = Field(ge=0.0)  # price of one CPU core-hour


class OrchestrationConfig(Section):
    retries: int = Field(ge=0)  # retries of a stage after a transient failure (never a data error)
    retry_delay_seconds: int = Field(ge=0)
    stage_timeout_minutes: int = Field(ge=1)  # a stage running longer is stopped and failed


class Config(Section):
    # Tokenizer releases the per-variant stages (encode, train_diffusion) fan out over.
    variants: list[Literal["plain", "aligned"]] = Field(min_length=1)
    data: DataConfig
    validate_: ValidateConfig = Field(alias="validate")  # `validate` shadows a BaseModel method
    prepare: PrepareConfig
    tokenizer: TokenizerConfig
    align: AlignConfig
    diffusion: DiffusionConfig
    sample: SampleConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    cost: CostConfig
    orchestration: OrchestrationConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain JSON-able values, as logged to MLflow."""
        return self.model_dump(mode="json", by_alias=True)[name]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ConfigError(ValueError):
    """A params file or override that does not fit the schema; the message names the key."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"--set {text!r}: expected section.key=value, e.g. --set data.resolution=64"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `section.key=value` set; the key must already exist."""
    import copy

    merged = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"--set {text!r}: unknown key '{where}' (known here: {known})")
            if depth == len(keys) - 1:
                node[key] = value
            else:
                node = node[key]
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (pass --params PATH)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def validate_dict(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
            lines.append(f"  {key}: {e['msg']}{got}")
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None


def load(path: Path, overrides: list[str] | None = None) -> Config:
    """Read `path`, apply `section.key=value` overrides, validate; raise ConfigError on a fault."""
    raw = apply_overrides(read_yaml(path), list(overrides or []))
    return validate_dict(raw, str(path) + (" with --set overrides" if overrides else ""))


def write_overrides(path: Path, overrides: list[str]) -> list[str]:
    """Apply `section.key=value` overrides to the params file itself, keeping its comments.

    `ldm run --set` does this, as `dvc exp run -S` does, so that DVC's record of what ran and
    the file agree. The result is validated before anything is written. Returns one line per
    changed value.
    """
    from ruamel.yaml import YAML

    validate_dict(apply_overrides(read_yaml(path), overrides), f"{path} with --set overrides")
    yaml_rt = YAML()  # round-trip mode: comments and key order survive
    yaml_rt.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own list style
    yaml_rt.width = 4096  # never re-wrap a long line
    yaml_rt.representer.add_representer(  # keep `null` written out, as the file has it
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = yaml_rt.load(path.read_text())
    changes = []
    for text in overrides:
        keys, value = parse_override(text)
        node = doc
        for key in keys[:-1]:
            node = node[key]
        if node[keys[-1]] != value:
            changes.append(f"{path.name}: {'.'.join(keys)}: {node[keys[-1]]!r} -> {value!r}")
            node[keys[-1]] = value
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        yaml_rt.dump(doc, handle)
    tmp.replace(path)
    return changes
