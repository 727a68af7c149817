"""One command per pipeline stage: what `dvc repro` runs (see dvc.yaml)."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer

from ldm.cli.common import (
    EXIT_UNEXPECTED,
    EXIT_USER,
    ParamsOption,
    SeedOption,
    SetOption,
    VariantOption,
    app,
    fail,
    open_project,
    pick_cells,
)
from ldm.errors import INTERRUPTED_DURING, Interrupted, LdmError, stop_on_signals
from ldm.paths import Paths, split_cell


def run_stage(
    stage: str, params: Path | None, overrides: list[str] | None, cell: str | None = None
) -> None:
    paths, cfg = open_project(params, overrides)
    from ldm import stages
    from ldm.stages import launch

    # This same command for one cell: what a stage with world_size > 1 runs under torchrun.
    command = [stage.replace("_", "-")]
    if cell is not None:
        variant, seed = split_cell(cell)
        command += ["--variant", variant, "--seed", str(seed)]
    command += [*(["--params", str(params.resolve())] if params else [])]
    command += [arg for text in overrides or [] for arg in ("--set", text)]
    name = f"{stage}@{cell}" if cell else stage
    try:
        with stop_on_signals():
            result = stages.run(stage, cfg, paths, cell, command)
    except Interrupted as err:  # its MLflow run is KILLED; its last resume point stands
        if not launch.launched_here() or launch.is_main():  # one line, not one per rank
            typer.secho(interruption_line(name, paths), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(err.exit_code) from None
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
    numbers = {k: v for k, v in shown.items() if isinstance(v, int | float)}
    typer.echo(f"{name}: done  " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(numbers.items())))


def interruption_line(name: str, paths: Paths) -> str:
    """Where the stage stopped and how to go on: `interrupted during train_diffusion@plain-0 at
    step 622; the last resume point is step 600: run `ldm run` to go on`."""
    from ldm import progress, tracking
    from ldm.training.checkpoint import latest_step

    resume_step = latest_step(paths.work(name))
    reached = progress.reached(name)
    line = f"{INTERRUPTED_DURING} {name}"
    if resume_step is None:
        line += "; it starts from the beginning when run again"
    else:
        line += f" at step {reached}" if reached is not None else ""
        line += f"; the last resume point is step {resume_step}"
    if os.environ.get(tracking.PARENT_RUN_ENV):  # a stage of `ldm run`
        again = "ldm run"
    elif os.environ.get("DVC_STAGE"):  # DVC names the stage it runs in its command's env
        again = "dvc repro"
    else:
        again = " ".join(["ldm", *sys.argv[1:]])
    return f"{line}: run `{again}` to go on"


def stage_command(stage: str, help: str) -> None:
    """`ldm <stage>`: one stage, run once."""

    def command(params: ParamsOption = None, overrides: SetOption = None) -> None:
        run_stage(stage, params, overrides)

    app.command(stage.replace("_", "-"), help=help)(command)


def variant_command(stage: str, help: str) -> None:
    """`ldm <stage> [--variant NAME] [--seed N]`: one stage of a cell (a variant trained with
    one seed), or of each cell the options leave open, in turn."""

    def command(
        params: ParamsOption = None,
        overrides: SetOption = None,
        variant: VariantOption = None,
        seed: SeedOption = None,
    ) -> None:
        _, cfg = open_project(params, overrides)
        for cell in pick_cells(cfg, variant, seed):
            run_stage(stage, params, overrides, cell)

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
