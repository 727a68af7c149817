"""One command per pipeline stage: what `dvc repro` runs (see dvc.yaml)."""

from __future__ import annotations

import traceback
from pathlib import Path

import typer

from ldm.cli.common import (
    EXIT_UNEXPECTED,
    EXIT_USER,
    ParamsOption,
    SetOption,
    VariantOption,
    app,
    fail,
    open_project,
)
from ldm.errors import LdmError


def run_stage(
    stage: str, params: Path | None, overrides: list[str] | None, variant: str | None = None
) -> None:
    paths, cfg = open_project(params, overrides)
    from ldm import stages
    from ldm.stages import launch

    # This same command for one variant: what a stage with world_size > 1 runs under torchrun.
    command = [stage.replace("_", "-"), *(["--variant", variant] if variant else [])]
    command += [*(["--params", str(params.resolve())] if params else [])]
    command += [arg for text in overrides or [] for arg in ("--set", text)]
    try:
        result = stages.run(stage, cfg, paths, variant, command)
    except LdmError as err:
        raise fail(str(err), EXIT_USER) from None
    except launch.RanksFailed as err:  # the rank printed its traceback
        raise fail(f"{stage}: {err}", EXIT_UNEXPECTED) from None
    except Exception:
        traceback.print_exc()
        raise fail(
            f"{stage}: unexpected error (see the traceback above)", EXIT_UNEXPECTED
        ) from None
    if launch.launched_here():  # one rank of several: the command that started them reports
        return
    shown = {k: v for k, v in result.metrics.items() if not k.startswith("n_rejected_")}
    name = f"{stage}@{variant}" if variant else stage
    numbers = {k: v for k, v in shown.items() if isinstance(v, int | float)}
    typer.echo(f"{name}: done  " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(numbers.items())))


def stage_command(stage: str, help: str) -> None:
    """`ldm <stage>`: one stage, run once."""

    def command(params: ParamsOption = None, overrides: SetOption = None) -> None:
        run_stage(stage, params, overrides)

    app.command(stage.replace("_", "-"), help=help)(command)


def variant_command(stage: str, help: str) -> None:
    """`ldm <stage> [--variant NAME]`: one stage of a variant, or of each in turn."""

    def command(
        params: ParamsOption = None, overrides: SetOption = None, variant: VariantOption = None
    ) -> None:
        _, cfg = open_project(params, overrides)
        for name in [variant] if variant else list(cfg.variants):
            run_stage(stage, params, overrides, name)

    app.command(stage.replace("_", "-"), help=help)(command)


stage_command(
    "validate",
    "Check every file under data.raw_dir; write the manifest, the rejects and the GX report.",
)
stage_command("prepare", "Crop and resize accepted images into train/val shards.")
stage_command(
    "reference",
    "Measure the real images once: the val features every FD is set against, the floor.",
)
variant_command(
    "train_tokenizer",
    "Train a variant's KL-VAE tokenizer (with VA-VAE's VF loss when the variant aligns).",
)
variant_command(
    "encode", "Encode the train split (and its mirror) into latents with a variant's tokenizer."
)
variant_command(
    "train_diffusion",
    "Train LightningDiT on a variant's latents (under torchrun: DDP over the GPUs).",
)
variant_command(
    "evaluate",
    "Measure a variant's generator: gFD with its reference lines, precision/recall, cost.",
)
stage_command(
    "report", "Write the trial's report, register each generator, recommend one for promotion."
)
