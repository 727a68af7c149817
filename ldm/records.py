"""The shapes of what the late stages write and read: typed, versioned by their fields.

- `StageCost`: what one stage cost (`data/metrics/<stage>.json`, keys `cost/...`), and the rule
  that prices its hours (`billed_usd`), used as a stage ends and again by the report.
- `ConvergenceCurve`: gFD against training step and compute during `train_diffusion`
  (`data/metrics/convergence@<cell>.json`, a cell being a variant trained with one seed).
- `EvaluateRecord`: one cell's quality, speed, cost and latent diagnostics
  (`data/metrics/evaluate@<cell>.json`), the contract between `evaluate`, `report`, the
  registry and the README's schema; the report merges a variant's cells into one
  (ldm/report/seeds.py).

A distance or similarity is only comparable within the network that measured it, so its JSON key
carries that network's name: the field `fd` measured with EfficientNet-Lite2 is written
`fd_effnet_lite2`, and read back from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from ldm.paths import cell_name

if TYPE_CHECKING:
    from ldm.config import CostConfig

COST_PREFIX = "cost/"
# Numbers of an evaluation that describe the reference lines, not the generator.
REFERENCE_NUMBERS = ("fd_train_val", "fd_random_latents", "relative_fd")


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # field -> the field holding the name of the network that measured it
    named_by: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _read_network_named_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.named_by:
            data = dict(data)
            for name, net_field in cls.named_by.items():
                key = f"{name}_{data.get(net_field)}"
                if key in data:
                    data[name] = data.pop(key)
        return data

    @model_serializer(mode="wrap")
    def _write_network_named_keys(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name, net_field in self.named_by.items():
            data[f"{name}_{getattr(self, net_field)}"] = data.pop(name)
        return data


class StageCost(Record):
    """What one stage cost. Energy is None where nothing measured it (a CPU), never 0."""

    wall_seconds: float = Field(ge=0.0)
    cpu_hours: float = Field(ge=0.0)
    gpu_hours: float = Field(ge=0.0)  # device_count x wall time, on GPUs only
    usd: float = Field(ge=0.0)
    energy_kwh: float | None = Field(default=None, ge=0.0)
    device_kind: str  # "cpu" or the GPU's model name
    device_count: int = Field(ge=0)  # GPUs the stage used; 0 on a CPU

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> StageCost:
        """Read the `cost/...` keys of a stage's metrics file."""
        values = {
            k.removeprefix(COST_PREFIX): v for k, v in metrics.items() if k.startswith(COST_PREFIX)
        }
        values.pop("peak_rss_mb", None)
        values.pop("attempts", None)  # the stage's own record; a sum over stages means nothing
        if "device_count" in values:
            values["device_count"] = int(values["device_count"])
        return cls.model_validate(values)

    def __add__(self, other: StageCost) -> StageCost:
        """Costs of stages that ran one after another (a variant's total)."""
        kinds = sorted({self.device_kind, other.device_kind})
        energy = None
        if self.energy_kwh is not None or other.energy_kwh is not None:
            energy = (self.energy_kwh or 0.0) + (other.energy_kwh or 0.0)
        return StageCost(
            wall_seconds=self.wall_seconds + other.wall_seconds,
            cpu_hours=self.cpu_hours + other.cpu_hours,
            gpu_hours=self.gpu_hours + other.gpu_hours,
            usd=self.usd + other.usd,
            energy_kwh=energy,
            device_kind=" + ".join(kinds),
            device_count=max(self.device_count, other.device_count),
        )

    def metrics(self, prefix: str = COST_PREFIX) -> dict[str, float]:
        """The numbers as flat metrics (`cost/usd`, ...); energy only where it was measured."""
        values = self.model_dump().items()
        return {prefix + k: float(v) for k, v in values if isinstance(v, int | float)}

    def priced(self, prices: CostConfig) -> StageCost:
        """This stage's hours at `prices`: the report's, so that a price change re-prices every
        number without rerunning a stage."""
        usd = billed_usd(self.cpu_hours, self.gpu_hours, prices)
        return self.model_copy(update={"usd": usd})


def billed_usd(cpu_hours: float, gpu_hours: float, prices: CostConfig) -> float:
    """What a stage's hours cost: the one rule, as the stage ends and again in the report.

    A GPU instance's price includes its CPUs, so hours on a GPU bill GPU-hours alone, unless
    `cost.bill_cpu_on_gpu` (a provider that charges them apart); without GPU-hours the CPU-hours
    are billed. Read from the hours, not from the last attempt's device: a stage resumed on
    another device carries the hours its earlier attempts spent on theirs.
    """
    on_gpu = gpu_hours > 0
    usd = cpu_hours * prices.cpu_hour_usd if prices.bill_cpu_on_gpu or not on_gpu else 0.0
    return usd + gpu_hours * prices.gpu_hour_usd


def total_cost(costs: list[StageCost]) -> StageCost:
    """Stages that ran one after another, as one."""
    return sum(costs[1:], start=costs[0])


def trial_cost(records: list[EvaluateRecord]) -> StageCost:
    """Every stage of the trial once: the shared ones appear in each variant's cost by name."""
    stages: dict[str, StageCost] = {}
    for record in records:
        stages |= record.cost.stages
    return total_cost(list(stages.values()))


class ConvergencePoint(Record):
    step: int = Field(ge=0)
    compute_hours: float = Field(ge=0.0)  # GPU-hours on GPUs, CPU-hours on a CPU, cumulative
    fd: float = Field(ge=0.0)
    # fd's bootstrap interval (val and generated rows resampled; the curve's interval_level);
    # None in curves from before it
    fd_lo: float | None = Field(default=None, ge=0.0)
    fd_hi: float | None = Field(default=None, ge=0.0)


class ConvergenceCurve(Record):
    """A cheap FD of EMA samples at fixed noise, every `diffusion.sample_every` steps."""

    named_by: ClassVar[dict[str, str]] = {}
    variant: str
    seed: int = 0  # the cell's training seed (trial.seeds); 0 in curves from before seeds
    feature_net: str
    compute_unit: str  # "gpu_hours" or "cpu_hours"
    num_samples: int = Field(ge=2)
    points: list[ConvergencePoint]
    # The floor at num_samples rows: the mean FD of num_samples-row subsets of the train split
    # against the val split. An FD of fewer rows reads higher, so the points are compared with
    # this, not with the evaluation's floor. None in curves from before it.
    floor: float | None = Field(default=None, ge=0.0)
    interval_level: float | None = Field(default=None, gt=0.0, lt=1.0)  # the points' coverage
    # the guidance its samples were drawn at (sample.cfg_scale); the evaluation may choose
    # another per variant. None in curves from before it.
    cfg_scale: float | None = None


class TokenizerQuality(Record):
    """Reconstruction of the val split, as measured once by `train_tokenizer@<variant>`."""

    named_by: ClassVar[dict[str, str]] = {
        "perceptual": "perceptual_net",
        "rfd": "feature_net",
        "cka": "cka_foundation",
    }
    psnr: float
    ssim: float
    perceptual: float  # a distance in a network the training never saw
    perceptual_net: str
    rfd: float  # FD of reconstructions vs originals
    feature_net: str
    cka: float  # linear CKA of latents vs the foundation model's features
    cka_foundation: str

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> TokenizerQuality:
        """Read the flat keys `train_tokenizer` writes: psnr, ssim, perceptual_<net>,
        rfd_<net> and cka_<foundation>; other keys (train/..., val/...) are ignored."""
        values: dict[str, Any] = {"psnr": metrics["psnr"], "ssim": metrics["ssim"]}
        for name, net_field in cls.named_by.items():
            keys = [k for k in metrics if k.startswith(f"{name}_") and "/" not in k]
            if len(keys) != 1:
                raise ValueError(f"expected one {name}_<network> metric, found {keys or 'none'}")
            values[name] = metrics[keys[0]]
            values[net_field] = keys[0].removeprefix(f"{name}_")
        return cls.model_validate(values)


class GenerationQuality(Record):
    """`num_samples` class-balanced generated images against the val split."""

    named_by: ClassVar[dict[str, str]] = {
        "fd": "feature_net",
        "fd_per_class": "feature_net",
        "fd_infinity": "feature_net",
        "kid": "feature_net",
        "kid_std": "feature_net",
        "cfg_selection": "feature_net",
    }
    feature_net: str
    num_samples: int = Field(ge=2)
    fd: float
    # The guidance every number here was measured at: of evaluate.cfg_scales, the one whose
    # samples came closest to the train split (`cfg_selection`: scale -> that FD, at
    # evaluate.select_samples images; None when there was nothing to choose). None in records
    # from before the choice, which used sample.cfg_scale.
    cfg_scale: float | None = None
    cfg_selection: dict[str, float] | None = None
    # FD extrapolated to infinitely many generated images (Chong & Forsyth 2020): comparable
    # across sample sizes, against the same val set. None in records from before it.
    fd_infinity: float | None = None
    kid: float | None = None  # KID (Bińkowski et al. 2018): unbiased at any sample size
    kid_std: float | None = None  # its spread over random subsets
    precision: float = Field(ge=0.0, le=1.0)  # Kynkäänniemi et al. 2019
    recall: float = Field(ge=0.0, le=1.0)
    density: float = Field(ge=0.0)  # Naeem et al. 2020; may exceed 1
    coverage: float = Field(ge=0.0, le=1.0)
    nearest_k: int = Field(ge=1)
    fd_per_class: dict[str, float] | None  # None when the data has no classes


def relative_fd(fd: float, floor: float, ceiling: float) -> float:
    """0 at the floor, 1 at the ceiling; infinite when the ceiling is not above the floor."""
    span = ceiling - floor
    return (fd - floor) / span if span > 0 else float("inf")


class ReferenceLines(Record):
    """What a perfect and an untrained generator score, in the same network and sample sizes."""

    feature_net: str
    fd_train_val: float  # train split vs val split: the floor
    fd_random_latents: float  # decoded N(0, I) latents vs val split: the ceiling

    def relative(self, fd: float) -> float:
        """0 at the floor, 1 at the ceiling: how much of the way an FD still has to go."""
        return relative_fd(fd, self.fd_train_val, self.fd_random_latents)


class Interval(Record):
    """A number's bootstrap spread: its standard error, an interval of coverage `level`, and
    the resamples' mean minus the number (an FD's small-sample bias, which resampling adds
    to; the interval is shifted back by it, see ldm/metrics/bootstrap.py)."""

    se: float = Field(ge=0.0)
    lo: float
    hi: float
    bias: float


class Uncertainty(Record):
    """How sure the generation numbers are (`evaluate.bootstrap`): `draws` resamples of the
    val rows (shared by every number of a draw, reference lines included) and of the generated,
    train and untrained rows. `intervals` is keyed by the numbers' names in the record: `fd`,
    `precision`, `recall`, `density`, `coverage`, `fd_train_val`, `fd_random_latents`,
    `relative_fd`."""

    draws: int = Field(ge=2)
    level: float = Field(gt=0.0, lt=1.0)
    seed: int
    intervals: dict[str, Interval]
    # each class's gFD interval, by class name (each class resampled on its own); None
    # without classes, and in records from before per-class intervals
    per_class: dict[str, Interval] | None = None


class LatentDiagnostics(Record):
    """Why a latent space generates as it does, measured by `evaluate` on the val split
    (ldm/stages/diagnostics.py): the share of spectral energy at normalised frequency ≥
    `frequency_cut` (ldm/metrics/spectrum.py) in the raw latents and in the images; each
    channel's mean and standard deviation of the val split's raw posterior means (before the
    tokenizer's normalisation); and rFD of Dec(z + σε), z the normalised posterior mean,
    against the val images, keyed by f"{σ:g}" with its bootstrap interval."""

    named_by: ClassVar[dict[str, str]] = {"noisy_rfd": "feature_net"}
    frequency_cut: float = Field(gt=0.0, lt=1.0)
    latent_high_frequency: float = Field(ge=0.0, le=1.0)
    image_high_frequency: float = Field(ge=0.0, le=1.0)
    channel_mean: list[float]
    channel_std: list[float]
    noisy_rfd: dict[str, float]
    noisy_rfd_intervals: dict[str, Interval]
    feature_net: str

    def metrics(self, prefix: str = "diagnostics/") -> dict[str, float]:
        """`diagnostics/latent_high_frequency`, `diagnostics/noisy_rfd/0.1` (and its `_se`,
        `_lo`, `_hi`), each channel by index and the channels' summary (std range, max |mean|)."""
        flat = {
            prefix + k: float(getattr(self, k))
            for k in ("frequency_cut", "latent_high_frequency", "image_high_frequency")
        }
        for name in ("channel_mean", "channel_std"):
            flat |= {f"{prefix}{name}/{i}": v for i, v in enumerate(getattr(self, name))}
        flat[prefix + "channel_std_min"] = min(self.channel_std)
        flat[prefix + "channel_std_max"] = max(self.channel_std)
        flat[prefix + "channel_mean_max_abs"] = max(abs(m) for m in self.channel_mean)
        for sigma, value in self.noisy_rfd.items():
            key = f"{prefix}noisy_rfd/{sigma}"
            flat[key] = value
            if (interval := self.noisy_rfd_intervals.get(sigma)) is not None:
                flat |= {f"{key}_{part}": getattr(interval, part) for part in ("se", "lo", "hi")}
        return flat


class SamplingSpeed(Record):
    solver: str
    steps: int
    cfg_scale: float
    device_kind: str
    sample_images_per_second: float  # latents drawn and decoded
    encode_images_per_second: float
    decode_images_per_second: float


class VariantCost(Record):
    """A variant's total, shared stages included, and what each stage contributed."""

    total: StageCost
    stages: dict[str, StageCost]

    def priced(self, prices: CostConfig) -> VariantCost:
        """Each stage at `prices`, the total their sum: a sum of CPU and GPU stages has no one
        billing rule, so the total is never priced whole."""
        stages = {name: cost.priced(prices) for name, cost in self.stages.items()}
        return VariantCost(total=total_cost(list(stages.values())), stages=stages)


class EvaluateRecord(Record):
    variant: str
    seed: int = 0  # the cell's training seed (trial.seeds); 0 in records from before seeds
    tokenizer: TokenizerQuality
    generation: GenerationQuality
    reference: ReferenceLines
    speed: SamplingSpeed
    cost: VariantCost
    # Measured in a network its tokenizer was trained against (evaluate.allow_self_graded):
    # its FDs flatter it. False in records written before the field existed.
    self_graded: bool = False
    uncertainty: Uncertainty | None = None  # None in records from before intervals
    diagnostics: LatentDiagnostics | None = None  # None in records from before them
    # A variant's cells merged into one record (ldm/report/seeds.py): the seeds it averages
    # and each number's standard deviation over them (`fd`, `relative_fd`, `precision`, ...,
    # `psnr`, `rfd`). None in one cell's own record.
    merged_seeds: list[int] | None = None
    seed_spread: dict[str, float] | None = None

    @property
    def cell(self) -> str:
        """`<variant>-<seed>`: the cell's stages, folders and registered model are named so."""
        return cell_name(self.variant, self.seed)

    @property
    def seed_count(self) -> int:
        """Training seeds behind the numbers: one for a cell's record."""
        return len(self.merged_seeds) if self.merged_seeds else 1

    def priced(self, prices: CostConfig) -> EvaluateRecord:
        """The record with its cost at `prices` (see `VariantCost.priced`)."""
        return self.model_copy(update={"cost": self.cost.priced(prices)})

    def interval(self, name: str) -> Interval | None:
        """The bootstrap interval of the number `name` (`fd`, `relative_fd`, ...), if measured."""
        return self.uncertainty.intervals.get(name) if self.uncertainty else None

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow: `generation/fd_effnet_lite2`, `cost/usd`, ..."""
        flat: dict[str, float] = {}
        for section in ("tokenizer", "generation", "reference", "speed"):
            for key, value in getattr(self, section).model_dump().items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    flat[f"{section}/{key}"] = float(value)
                elif isinstance(value, dict):  # per-class FDs
                    flat |= {f"{section}/{key}/{k}": float(v) for k, v in value.items()}
        flat |= self.cost.total.metrics()
        flat["reference/relative_fd"] = self.reference.relative(self.generation.fd)
        for name, interval in (self.uncertainty.intervals if self.uncertainty else {}).items():
            section = "reference" if name in REFERENCE_NUMBERS else "generation"
            key = f"{section}/" + (f"fd_{self.generation.feature_net}" if name == "fd" else name)
            flat |= {f"{key}_{part}": getattr(interval, part) for part in ("se", "lo", "hi")}
        per_class = (self.uncertainty.per_class if self.uncertainty else None) or {}
        for name, interval in per_class.items():
            key = f"generation/fd_per_class/{name}"
            flat |= {f"{key}_{part}": getattr(interval, part) for part in ("se", "lo", "hi")}
        return flat | (self.diagnostics.metrics() if self.diagnostics else {})
