"""The one typed config: pydantic models that mirror `params.yaml` section by section.

`load(path, overrides)` reads the YAML, applies `section.key=value` overrides and validates the
result. Any unknown key, missing key or wrong type raises `ConfigError` naming the key, before a
stage does any work. Defaults live nowhere else: `params.yaml` spells out every value, and a test
keeps it in step with these models, so DVC tracks everything that changes a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ldm.errors import ConfigError as ConfigError  # raised by load; callers catch it here
from ldm.nested import apply_overrides as nested_overrides
from ldm.nested import read_yaml, validation_error
from ldm.paths import cell_name

FoundationName = Literal["effnet_lite0", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14"]


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

    steps: int = Field(ge=1)  # the budget of every variant
    batch_size: int = Field(ge=1)  # global batch per optimiser step, over all processes
    lr: float = Field(gt=0.0)
    betas: tuple[float, float]
    warmup_steps: int = Field(ge=0)
    lr_schedule: Literal["constant", "cosine"]
    kl_weight: float = Field(ge=0.0)
    perceptual: Literal["effnet_lite0", "lpips_vgg", "none"]  # the perceptual loss's network
    perceptual_weight: float = Field(ge=0.0)
    lpips_vgg_weights: Path | None  # local torchvision VGG16 weights, needed for lpips_vgg
    disc_weight: float = Field(ge=0.0)  # 0 switches the PatchGAN off
    disc_start: int = Field(ge=0)  # step at which the GAN loss starts
    eval_every: int = Field(ge=1)  # steps between validation losses and a reconstruction grid
    checkpoint_every: int = Field(ge=1)
    grid_images: int = Field(ge=1)  # originals shown over their reconstructions
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    world_size: int = Field(ge=1)  # processes (one per GPU); > 1 launches the stage via torchrun
    precision: Literal["fp32", "bf16"]  # bf16 autocast, CUDA only
    compile: bool  # torch.compile, CUDA only
    channels_last: bool


class AlignPhase(Section):
    share: float = Field(gt=0.0, le=1.0)  # fraction of tokenizer.steps this phase lasts
    vf_weight: float = Field(ge=0.0)  # w_hyper, times the adaptive weight; 0: reconstruction only
    use_margins: bool  # False: margins 0, the paper's first, "align hard" phase


def _shares_add_up(phases: list[AlignPhase]) -> list[AlignPhase]:
    """Every variant trains for tokenizer.steps: the phases must split exactly that budget."""
    total = sum(phase.share for phase in phases)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"the shares add up to {total:g}; they must add up to 1")
    return phases


Phases = Annotated[list[AlignPhase], Field(min_length=1), AfterValidator(_shares_add_up)]


class AlignConfig(Section):
    """VA-VAE's alignment tuning: the VF loss against a frozen vision foundation model."""

    foundation: FoundationName  # the frozen network aligned to
    foundation_weights: Path | None  # local checkpoint file, needed for the dinov2 models
    foundation_sha256: str | None  # checked when given
    phases: Phases  # shares of tokenizer.steps, summing to 1
    cos_margin: float = Field(ge=0.0, le=2.0)  # m1
    distmat_margin: float = Field(ge=0.0, le=2.0)  # m2
    cos_weight: float = Field(ge=0.0)
    distmat_weight: float = Field(ge=0.0)
    adaptive_max: float = Field(gt=0.0)  # clamp of the adaptive weight


VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # usable in DVC stage names, paths and MLflow tags


class VariantConfig(Section):
    """One tokenizer setting compared downstream. Every variant trains from scratch for
    tokenizer.steps, so the comparison is at an equal budget. A field left null takes the
    value of the `align` section (or, for latent_channels, the preset's d)."""

    preset: Literal["f4d8", "f16d16", "f16d32", "f16d64"]  # architecture, ldm/tokenizer/model.py
    latent_channels: int | None = Field(default=None, ge=1)  # d; null: the preset's
    align: bool  # train with VA-VAE's VF loss against a foundation model
    foundation: FoundationName | None = None  # null: align.foundation
    phases: Phases | None = None  # null: align.phases
    cos_margin: float | None = Field(default=None, ge=0.0, le=2.0)  # null: align.cos_margin
    distmat_margin: float | None = Field(default=None, ge=0.0, le=2.0)
    equivariance: bool = False  # add EQ-VAE's equivariance loss (the `equivariance` section)
    latent_denoising: bool = False  # decode l-DeTok's noised latents (`latent_denoising`)


class EquivarianceConfig(Section):  # EQ-VAE, for variants with equivariance: true
    """d(Dec(tau(z)), tau(x)), d the reconstruction loss, tau a downscaling (and turn) per step."""

    weight: float = Field(ge=0.0)  # added to the objective on the steps that draw it
    share: float = Field(gt=0.0, le=1.0)  # of the steps that add it (EQ-VAE's p)
    scales: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(min_length=1)  # tau's choices
    rotations: bool  # also rotate by 0/90/180/270 degrees, drawn with the scale


class LatentDenoisingConfig(Section):  # l-DeTok, for variants with latent_denoising: true
    """The decoder reconstructs x from (1 - t)·z + t·gamma·eps, t ~ U(0, 1) per image."""

    gamma: float = Field(ge=0.0)  # the noise's scale
    mask: bool  # also blank random f x f input patches (one latent cell each)
    mask_ratio: tuple[float, float]  # (low, high): a share max(0, U(low, high)) per image


class TrialConfig(Section):
    # Every variant trains once per seed, a cell `<variant>-<seed>`: its tokenizer with
    # tokenizer.seed + seed, its DiT with diffusion.seed + seed; evaluate.seed, sample.seed shared.
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)  # each once (Config checks)


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
    sample_every: int = Field(ge=1)  # steps between sample grids and convergence-curve points
    curve_samples: int = Field(ge=2)  # EMA samples per convergence-curve FD (fixed seed)
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    world_size: int = Field(ge=1)  # processes (one per GPU); > 1 launches the stage via torchrun
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


class BootstrapConfig(Section):  # every generation number's uncertainty: rows resampled
    draws: int = Field(ge=2)
    level: float = Field(gt=0.0, lt=1.0)  # the intervals' coverage
    seed: int


class EvaluateConfig(Section):
    """How reconstructions and generated images are measured (evaluate, and the curve)."""

    features: Literal["effnet_lite2", "inception", "dinov2_vitl14"]  # space of the Frechet distance
    features_weights: Path | None  # local weights for inception / dinov2_vitl14
    features_sha256: str | None  # checked when given
    num_samples: int = Field(ge=2)  # class-balanced generated images for the gFD (fixed seed)
    nearest_k: int = Field(ge=1)  # k of the k-NN manifolds of precision/recall/density/coverage
    seed: int  # of the generated images, so a re-evaluation draws the same ones
    batch_size: int = Field(ge=1)
    bootstrap: BootstrapConfig
    # Guidance scales tried per variant; the one with the lowest FD against the train split
    # (not val: the gFD is measured there) is the variant's, recorded and registered with it.
    cfg_scales: list[Annotated[float, Field(ge=1.0)]] = Field(min_length=1)
    select_samples: int = Field(ge=2)  # generated images per scale for that choice
    kid_subset_size: int = Field(ge=2)  # rows per KID subset (cut to the smaller set)
    allow_self_graded: bool  # grade in a network a tokenizer was trained against (marked)


class ReportConfig(Section):  # the trial's report: charts, costs, projections, the verdict
    target_fd: float = Field(gt=0.0)  # the gFD (evaluate.features space) a usable model needs
    projection_budget_multiple: float = Field(gt=1.0)  # "not reached within N x this budget"
    # A gFD gap below this share of the better gFD is "no detectable difference", however
    # narrow its interval: the spread that retraining with another seed alone causes.
    min_effect: float = Field(ge=0.0, lt=1.0)
    # The between-seed spread of one variant's gFD that the planner assumes while a trial has
    # one seed; null: equal to the measured within-seed (bootstrap) spread.
    seed_spread_prior: float | None = Field(ge=0.0)


class RegistryConfig(Section):
    model_name: str = Field(min_length=1)  # the MLflow registered model of every generator


class Gates(Section):
    """Quality and cost a version must meet for one alias; null switches a gate off."""

    max_fd: float | None = Field(gt=0.0)  # the gFD, in evaluate.features space
    # (gFD - fd_train_val) / (fd_random_latents - fd_train_val): 0 is as good as real data,
    # 1 as bad as an untrained generator; comparable across data sets, unlike the raw FD
    max_relative_fd: float | None = Field(ge=0.0)
    min_precision: float | None = Field(ge=0.0, le=1.0)
    min_recall: float | None = Field(ge=0.0, le=1.0)
    max_cost_usd: float | None = Field(ge=0.0)  # the variant's whole trial cost


class GatesConfig(Section):
    staging: Gates
    production: Gates  # production also requires that the version held `staging`


class PromotionConfig(Section):
    gates: GatesConfig


class TrackingConfig(Section):
    experiment: str = Field(min_length=1)  # MLflow experiment that holds the trial's runs


class CostConfig(Section):
    gpu_hour_usd: float = Field(ge=0.0)  # price of one GPU-hour on the host that trains
    cpu_hour_usd: float = Field(ge=0.0)  # price of one CPU core-hour
    # A GPU instance's price includes its CPUs: a GPU stage bills GPU-hours only, unless true.
    bill_cpu_on_gpu: bool


class OrchestrationConfig(Section):
    retries: int = Field(ge=0)  # retries of a stage after a transient failure (never a data error)
    retry_delay_seconds: int = Field(ge=0)
    stage_timeout_minutes: int = Field(ge=1)  # a stage running longer is stopped and failed
    gpu_pool: str | None  # a Prefect work pool on the GPU host; null: every stage runs here
    # Stage families sent to gpu_pool: those whose inputs all travel through the DVC remote
    # (evaluate also reads metrics files that DVC does not push).
    gpu_stages: list[Literal["train_tokenizer", "encode", "train_diffusion"]]


class Config(Section):
    # Tokenizer settings compared downstream; every per-variant stage fans out over them.
    variants: dict[str, VariantConfig] = Field(min_length=1)
    trial: TrialConfig
    data: DataConfig
    validate_: ValidateConfig = Field(alias="validate")  # `validate` shadows a BaseModel method
    prepare: PrepareConfig
    tokenizer: TokenizerConfig
    align: AlignConfig
    equivariance: EquivarianceConfig
    latent_denoising: LatentDenoisingConfig
    diffusion: DiffusionConfig
    sample: SampleConfig
    evaluate: EvaluateConfig
    report: ReportConfig
    registry: RegistryConfig
    promotion: PromotionConfig
    tracking: TrackingConfig
    cost: CostConfig
    orchestration: OrchestrationConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cell_names_are_usable(self) -> Config:
        import re

        for name in self.variants:
            if not re.match(VARIANT_NAME, name):
                raise ValueError(
                    f"variants: {name!r} cannot name a stage or a folder; use letters, digits, "
                    "'-' and '_', starting with a letter or digit"
                )
        seeds = self.trial.seeds  # a seed listed twice would name its cells twice
        if twice := sorted({s for s in seeds if seeds.count(s) > 1}):
            raise ValueError(f"trial.seeds: {twice} listed more than once; list each seed once")
        return self

    @model_validator(mode="after")
    def _not_graded_in_its_own_space(self) -> Config:
        for name in [] if self.evaluate.allow_self_graded else self.variants:
            if reason := self.trained_against(name).get(self.evaluate.features):
                raise ValueError(
                    f"evaluate.features is {self.evaluate.features}, the network variant {name!r}"
                    f" was trained against ({reason}). Pick another evaluate.features, or set "
                    "evaluate.allow_self_graded: true (its numbers are then marked self-graded)"
                )
        return self

    def trained_against(self, name: str) -> dict[str, str]:
        """The networks variant `name`'s tokenizer was trained against, each with the setting
        that chose it: its foundation model when it aligns, its perceptual loss's network."""
        v, perceptual = self.variants[name], self.tokenizer.perceptual
        networks = {perceptual: "tokenizer.perceptual"} if perceptual != "none" else {}
        if v.align and v.foundation:
            networks[v.foundation] = f"variants.{name}.foundation"
        elif v.align:
            networks[self.align.foundation] = "align.foundation"
        return networks

    def variant(self, name: str) -> ResolvedVariant:
        """A variant with its nulls filled in from the `align` section."""
        if name not in self.variants:
            raise KeyError(name)
        v, align = self.variants[name], self.align
        return ResolvedVariant(
            name=name,
            preset=v.preset,
            latent_channels=v.latent_channels,
            align=v.align,
            foundation=v.foundation or align.foundation,
            phases=tuple(v.phases or align.phases),
            cos_margin=align.cos_margin if v.cos_margin is None else v.cos_margin,
            distmat_margin=align.distmat_margin if v.distmat_margin is None else v.distmat_margin,
            equivariance=v.equivariance,
            latent_denoising=v.latent_denoising,
        )

    def cells(self) -> list[str]:
        """Every variant with every seed, in DVC's matrix order: `plain-0`, `plain-1`, ..."""
        return [cell_name(variant, seed) for variant in self.variants for seed in self.trial.seeds]

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain JSON-able values, as logged to MLflow."""
        return self.model_dump(mode="json", by_alias=True)[name]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


@dataclass(frozen=True)
class ResolvedVariant:
    """A variant as the stages use it: every value decided."""

    name: str
    preset: str
    latent_channels: int | None
    align: bool
    foundation: str  # aligned to when `align`; always the space of the CKA it reports
    phases: tuple[AlignPhase, ...]
    cos_margin: float
    distmat_margin: float
    equivariance: bool  # trains with the `equivariance` section's loss
    latent_denoising: bool  # trains with the `latent_denoising` section's corruption


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`raw` with each `section.key=value` override set (ldm/nested.py), a variant's optional
    fields (`variants.<name>.<field>`, null or false when left out) included."""
    optional = {name for name, f in VariantConfig.model_fields.items() if not f.is_required()}
    return nested_overrides(
        raw, overrides, lambda k: len(k) == 3 and k[0] == "variants" and k[2] in optional
    )


def validate_dict(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise validation_error(err, source) from None


def load(path: Path, overrides: list[str] | None = None) -> Config:
    """Read `path`, apply `section.key=value` overrides, validate; raise ConfigError on a fault."""
    raw = apply_overrides(read_yaml(path), list(overrides or []))
    return validate_dict(raw, str(path) + (" with --set overrides" if overrides else ""))
