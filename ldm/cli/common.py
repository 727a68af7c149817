"""What every `ldm` command shares: the Typer app, options, config loading and exit codes.

Heavy libraries are imported inside the commands so that `ldm --help` answers at once.
Exit codes: 0 done; 1 the data or setup needs a fix (message says what); 2 bad usage or config;
3 an unexpected error (traceback printed; `ldm run` retries those, as they may be transient).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ldm.config import Config, ConfigError
from ldm.errors import LdmError
from ldm.paths import Paths, cell_name

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
VariantOption = Annotated[
    str | None,
    typer.Option(
        "--variant", help="Tokenizer variant (see `variants` in params.yaml) [default: all]."
    ),
]
SeedOption = Annotated[
    int | None,
    typer.Option("--seed", help="Training seed, one of trial.seeds in params.yaml [default: all]."),
]


def fail(message: str, code: int) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """An LdmError ends the command with its message and EXIT_USER."""
    try:
        yield
    except LdmError as err:
        raise fail(str(err), EXIT_USER) from None


def pick_cells(cfg: Config, variant: str | None, seed: int | None) -> list[str]:
    """The cells (`plain-0`) that `--variant` and `--seed` pick, each option defaulting to all
    (exit 2 naming the setting for a value params.yaml does not list)."""
    if variant is not None and variant not in cfg.variants:
        raise fail(f"--variant {variant}: not in variants {list(cfg.variants)}", EXIT_USAGE)
    if seed is not None and seed not in cfg.trial.seeds:
        raise fail(
            f"--seed {seed}: not in trial.seeds {cfg.trial.seeds}; add it there to train it",
            EXIT_USAGE,
        )
    variants = [variant] if variant is not None else list(cfg.variants)
    seeds = [seed] if seed is not None else cfg.trial.seeds
    return [cell_name(v, s) for v in variants for s in seeds]


def open_project(params: Path | None, overrides: list[str] | None) -> tuple[Paths, Config]:
    """The project the command runs in, and its validated config (exit 2 when it is not)."""
    from ldm import config

    paths = Paths.discover()
    try:
        return paths, config.load(params or paths.root / "params.yaml", overrides)
    except ConfigError as err:
        raise fail(str(err), EXIT_USAGE) from None
