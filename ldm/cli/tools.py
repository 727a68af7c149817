"""Commands around the pipeline: sampling, the bundled data, presets, the config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ldm.cli.common import (
    EXIT_USAGE,
    ParamsOption,
    SetOption,
    app,
    fail,
    open_project,
    pick_cells,
    user_errors,
)
from ldm.config import ConfigError
from ldm.paths import Paths


@app.command("sample")
def sample_images(
    out: Annotated[Path, typer.Argument(help="A .png file for a grid, or a folder for files.")],
    variant: Annotated[
        str | None, typer.Option(help="Which variant's diffusion model [default: aligned].")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Which training seed's model, one of trial.seeds (not the sampling seed, "
            "sample.seed) [default: the first]."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="A diffusion release folder [default: data/checkpoints/diffusion-VARIANT-SEED]."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="A registered generator instead, e.g. models:/ldm-generator@production; it "
            "samples with its own settings, seeded by sample.seed."
        ),
    ] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Number of images.")] = 16,
    class_name: Annotated[
        str | None,
        typer.Option(
            "--class", help="Draw only this class, by name or id [default: the classes in turn]."
        ),
    ] = None,
    params: ParamsOption = None,
    overrides: SetOption = None,
) -> None:
    """Generate images with a trained diffusion model (sampler settings: `sample` section)."""
    paths, cfg = open_project(params, overrides)
    picked = variant is not None or seed is not None
    if model is not None and (picked or checkpoint is not None):
        raise fail(
            "--model replaces --variant, --seed and --checkpoint; give one of them", EXIT_USAGE
        )
    release = checkpoint
    if checkpoint is None and model is None:
        first = cfg.trial.seeds[0] if seed is None else seed
        (cell,) = pick_cells(cfg, variant or "aligned", first)
        release = paths.diffusion(cell)
    from PIL import Image

    from ldm.generate import image_grid

    with user_errors():
        if model is not None:
            from ldm.tracking.pyfunc import sample_registered
            from ldm.tracking.registry import load_registered

            generator, _ = load_registered(paths.root, model)
            images = sample_registered(generator, n, class_name, cfg.sample.seed)
        else:
            from ldm.generate import generate
            from ldm.training.devices import pick_device

            device = pick_device(cfg.diffusion.device)
            images = generate(release, paths.root, n, class_name, cfg.sample, device)
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_grid(images, columns=min(n, 8))).save(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(out / f"sample-{i:05d}.png")
    typer.echo(f"wrote {n} samples to {out}")


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

    total = per_class * len(PHOTOS)
    with user_errors(), progress_bar(f"sample-data {directory}", total) as advance:
        counts = write_sample(directory, per_class, size, seed, progress=advance)
    typer.echo(f"wrote {sum(counts.values())} images in {len(counts)} classes to {directory}")


@app.command()
def preset(name: Annotated[str, typer.Argument(help="A file in presets/, e.g. paper.")]) -> None:
    """Write a named preset's values into params.yaml (validated first; comments kept)."""
    import json

    from ldm.params_file import preset_values, write_overrides

    paths = Paths.discover()
    try:
        values = preset_values(paths.root / "presets", name)
        overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
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

    _, cfg = open_project(params, overrides)
    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
