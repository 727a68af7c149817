"""The config's sections that train nothing: how the trial is judged, recorded, priced and
driven (report, registry, promotion, tracking, cost, orchestration), and the base every section
shares. `ldm.config` assembles them into the one `Config`; import them from there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
