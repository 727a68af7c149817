"""The `ldm` command: one sub-command per stage, `ldm run` for the whole trial, and helpers.

Heavy libraries are imported inside the commands so that `ldm --help` answers at once.
Exit codes: 0 done; 1 the data or setup needs a fix (message says what); 2 bad usage or config;
3 an unexpected error (traceback printed; `ldm run` retries those, as they may be transient).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Annotated

import typer

from ldm.config import Config, ConfigError
from ldm.errors import LdmError
from ldm.paths import Paths

EXIT_USER, EXIT_USAGE, EXIT_UNEXPECTED = 1, 2, 3

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Proof-of-concept trials of latent diffusion on your own images.",
)

ParamsOption = Annotated[
    Path | None,
    typer.Option("--params", help="Params file [default: params.yaml in the project root]."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one value, e.g. --set data.resolution=64 (repeatable)."),
]


def fail(message: str, code: int) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load_config(paths: Paths, params: Path | None, overrides: list[str] | None) -> Config:
    from ldm import config

    try:
        return config.load(params or paths.root / "params.yaml", overrides)
    except ConfigError as err:
        raise fail(str(err), EXIT_USAGE) from None


def run_stage(
    stage: str, params: Path | None, overrides: list[str] | None, variant: str | None = None
) -> None:
    paths = Paths.discover()
    cfg = load_config(paths, params, overrides)
    from ldm import stages

    try:
        result = stages.run(stage, cfg, paths, variant)
    except LdmError as err:
        raise fail(str(err), EXIT_USER) from None
    except Exception:
        traceback.print_exc()
        raise fail(
            f"{stage}: unexpected error (see the traceback above)", EXIT_UNEXPECTED
        ) from None
    shown = {k: v for k, v in result.metrics.items() if not k.startswith("n_rejected_")}
    name = f"{stage}@{variant}" if variant else stage
    typer.echo(f"{name}: done  " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())))


@app.command()
def validate(params: ParamsOption = None, overrides: SetOption = None) -> None:
    """Check every file under data.raw_dir; write the manifest, the rejects and the GX report."""
    run_stage("validate", params, overrides)


@app.command()
def prepare(params: ParamsOption = None, overrides: SetOption = None) -> None:
    """Crop and resize accepted images into train/val shards."""
    run_stage("prepare", params, overrides)


@app.command("train-tokenizer")
def train_tokenizer(params: ParamsOption = None, overrides: SetOption = None) -> None:
    """Train the plain KL-VAE tokenizer (reconstruction losses only)."""
    run_stage("train_tokenizer", params, overrides)


@app.command("align-tokenizer")
def align_tokenizer(params: ParamsOption = None, overrides: SetOption = None) -> None:
    """Alignment tuning: train the tokenizer with VA-VAE's VF loss (align section)."""
    run_stage("align_tokenizer", params, overrides)


VariantOption = Annotated[
    str | None,
    typer.Option(
        "--variant", help="Tokenizer variant (see `variants` in params.yaml) [default: all]."
    ),
]


def run_per_variant(
    stage: str, params: Path | None, overrides: list[str] | None, variant: str | None
) -> None:
    cfg = load_config(Paths.discover(), params, overrides)
    for name in [variant] if variant else cfg.variants:
        run_stage(stage, params, overrides, name)


@app.command()
def encode(
    params: ParamsOption = None, overrides: SetOption = None, variant: VariantOption = None
) -> None:
    """Encode the train split (and its mirror) into latents with a variant's tokenizer."""
    run_per_variant("encode", params, overrides, variant)


@app.command("train-diffusion")
def train_diffusion(
    params: ParamsOption = None, overrides: SetOption = None, variant: VariantOption = None
) -> None:
    """Train LightningDiT on a variant's latents (under torchrun: DDP over the GPUs)."""
    run_per_variant("train_diffusion", params, overrides, variant)


@app.command("sample")
def sample_images(
    out: Annotated[Path, typer.Argument(help="A .png file for a grid, or a folder for files.")],
    variant: Annotated[str, typer.Option(help="Which variant's diffusion model.")] = "aligned",
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="A diffusion release folder [default: data/checkpoints/diffusion-VARIANT]."
        ),
    ] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Number of images.")] = 16,
    class_name: Annotated[
        str | None,
        typer.Option("--class", help="Draw only this class [default: the classes in turn]."),
    ] = None,
    params: ParamsOption = None,
    overrides: SetOption = None,
) -> None:
    """Generate images with a trained diffusion model (sampler settings: `sample` section)."""
    paths = Paths.discover()
    cfg = load_config(paths, params, overrides)
    from PIL import Image

    from ldm.generate import generate, image_grid
    from ldm.stages.tokenizer import pick_device

    try:
        images = generate(
            checkpoint or paths.diffusion(variant),
            paths.root,
            n,
            class_name,
            cfg.sample,
            pick_device(cfg.diffusion.device),
        )
    except LdmError as err:
        raise fail(str(err), EXIT_USER) from None
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_grid(images, columns=min(n, 8))).save(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(out / f"sample-{i:05d}.png")
    typer.echo(f"wrote {n} samples to {out}")


@app.command()
def run(
    overrides: SetOption = None,
    sample_if_empty: Annotated[
        bool,
        typer.Option(
            help="When data.raw_dir holds no files, write the bundled sample there and use it."
        ),
    ] = True,
) -> None:
    """Run the whole trial as a Prefect flow; each stage runs through `dvc repro`.

    --set values are written into params.yaml first (as `dvc exp run -S` does), so DVC and the
    records agree on what ran. Stages whose inputs did not change are skipped.
    """
    from ldm.config import write_overrides

    paths = Paths.discover()
    params = paths.root / "params.yaml"
    cfg = load_config(paths, params, overrides)
    ensure_images(paths.resolve(cfg.data.raw_dir), sample_if_empty)
    if overrides:
        for line in write_overrides(params, overrides):
            typer.echo(line)
    outcome = start_trial_flow(paths.root)
    for stage, status in outcome["stages"].items():
        typer.echo(f"  {stage:<16} {status}")
    typer.echo(f"MLflow parent run: {outcome['mlflow_parent_run_id']}  (browse with `ldm ui`)")


def ensure_images(raw_dir: Path, sample_if_empty: bool) -> None:
    """Fail early, or write the sample, when the data folder cannot feed a trial."""
    from ldm.data.validate import dvc_blockers

    if not raw_dir.is_dir() or not any(entry.is_file() for entry in raw_dir.rglob("*")):
        if not sample_if_empty:
            raise fail(
                f"{raw_dir} holds no files: put your images there (sub-folders = classes)",
                EXIT_USER,
            )
        typer.echo(
            f"{raw_dir} holds no files: writing the bundled sample dataset there and "
            "using it. To trial your own images, replace it with them."
        )
        sample_data(raw_dir)
    blockers = dvc_blockers(raw_dir)
    if blockers:
        listed = "\n".join(f"  {raw_dir / path}" for path in blockers[:20])
        raise fail(
            f"{len(blockers)} broken symlink(s) under {raw_dir} stop DVC from hashing "
            f"the data:\n{listed}\nFix their targets or remove the links, then run "
            "again (`ldm validate` lists every other problem too).",
            EXIT_USER,
        )


def start_trial_flow(root: Path) -> dict:
    """Run `python -m flows.trial` in its own process: `ldm` itself never imports Prefect."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    # Prefect's local server keeps its run history in the project unless a server is configured.
    env = {"PREFECT_HOME": str(root / ".prefect"), **os.environ}
    with tempfile.TemporaryDirectory() as scratch:
        result_file = Path(scratch) / "trial.json"
        command = [
            sys.executable,
            "-m",
            "flows.trial",
            str(root),
            "--result-file",
            str(result_file),
        ]
        flow = subprocess.run(command, env=env, check=False)
        if flow.returncode != 0 or not result_file.is_file():
            raise fail(
                "the trial failed (the log above names the stage and why). The trial's "
                "MLflow run holds what ran before it: `ldm ui`.",
                EXIT_USER,
            )
        return json.loads(result_file.read_text())


@app.command("sample-data")
def sample_data(
    directory: Annotated[
        Path, typer.Argument(help="Empty or new folder to write the images into.")
    ],
    per_class: Annotated[int, typer.Option(min=1, help="Images per class.")] = 200,
    size: Annotated[int, typer.Option(min=16, help="Side of each image in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the crops; same seed, same bytes.")] = 0,
) -> None:
    """Write a small real dataset (crops of photos shipped with scikit-image) into DIRECTORY."""
    from ldm.data.sample import PHOTOS, write_sample
    from ldm.progress import progress_bar

    try:
        with progress_bar(f"sample-data {directory}", per_class * len(PHOTOS)) as advance:
            counts = write_sample(directory, per_class, size, seed, progress=advance)
    except LdmError as err:
        raise fail(str(err), EXIT_USER) from None
    typer.echo(f"wrote {sum(counts.values())} images in {len(counts)} classes to {directory}")


@app.command()
def preset(name: Annotated[str, typer.Argument(help="A file in presets/, e.g. paper.")]) -> None:
    """Write a named preset's values into params.yaml (validated first; comments kept)."""
    import json

    import yaml

    from ldm.config import write_overrides

    paths = Paths.discover()
    source = paths.root / "presets" / f"{name}.yaml"
    if not source.is_file():
        known = sorted(p.stem for p in (paths.root / "presets").glob("*.yaml"))
        raise fail(f"no preset {name!r} in {source.parent}; known: {known}", EXIT_USAGE)
    values = yaml.safe_load(source.read_text())
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    try:
        changes = write_overrides(paths.root / "params.yaml", overrides)
    except ConfigError as err:
        raise fail(str(err), EXIT_USAGE) from None
    for line in changes:
        typer.echo(line)
    typer.echo(f"params.yaml now follows the {name} preset ({len(changes)} values changed)")


@app.command("show-config")
def show_config(params: ParamsOption = None, overrides: SetOption = None) -> None:
    """Print the validated config, overrides applied, as YAML."""
    import yaml

    cfg = load_config(Paths.discover(), params, overrides)
    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000) -> None:
    """Open the MLflow UI on the project's tracking store."""
    import subprocess
    import sys

    from ldm.tracking import tracking_uri

    uri = tracking_uri(Paths.discover().root)
    typer.echo(f"MLflow UI for {uri} on http://127.0.0.1:{port} (Ctrl+C to stop)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        check=False,
    )
