"""Commands on the model registry and MLflow's servers: promote, rollback, models, serve, ui."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from ldm.cli.common import EXIT_USAGE, ParamsOption, SetOption, app, fail, open_project, user_errors


class Stage(enum.StrEnum):
    staging = "staging"
    production = "production"


ReasonOption = Annotated[
    str | None, typer.Option(help="Why; recorded in the promotion log. Required with --force.")
]


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The version number (see `ldm models`).")],
    to: Annotated[Stage, typer.Option("--to", help="The alias to give it.")],
    reason: ReasonOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Override failed gates (needs --reason; recorded).")
    ] = False,
    params: ParamsOption = None,
    overrides: SetOption = None,
) -> None:
    """Give a version the staging or production alias if it passes `promotion.gates`."""
    paths, cfg = open_project(params, overrides)
    if force and not (reason and reason.strip()):
        raise fail(
            "--force needs --reason TEXT: an override is recorded with its reason", EXIT_USAGE
        )
    from ldm.tracking.promotion import previous_alias, promote

    gates = getattr(cfg.promotion.gates, to.value)
    with user_errors():
        move = promote(paths.root, cfg.registry.model_name, version, to.value, gates, reason, force)
    for line in move.gates:
        typer.echo(f"  {line}")
    name = cfg.registry.model_name
    if not move.changed:
        typer.echo(f"version {version} of {name} already holds {to.value}; nothing changed")
        return
    forced = " (FORCED past failed gates)" if move.forced else ""
    before = f"; version {move.previous} is now {previous_alias(to.value)}" if move.previous else ""
    typer.echo(f"version {version} of {name} now holds {to.value}{forced}{before}")


@app.command()
def rollback(
    stage: Annotated[Stage, typer.Argument(help="The alias to give back.")],
    reason: ReasonOption = None,
    params: ParamsOption = None,
    overrides: SetOption = None,
) -> None:
    """Give an alias back to the version that held it before (run again to undo)."""
    paths, cfg = open_project(params, overrides)
    from ldm.tracking.promotion import rollback

    with user_errors():
        move = rollback(paths.root, cfg.registry.model_name, stage.value, reason)
    typer.echo(
        f"version {move.version} of {cfg.registry.model_name} holds {stage.value} again "
        f"(it was version {move.previous})"
    )


@app.command("models")
def list_models(params: ParamsOption = None, overrides: SetOption = None) -> None:
    """List the registered generator's versions with their aliases and key metrics."""
    paths, cfg = open_project(params, overrides)
    from rich.console import Console
    from rich.table import Table

    from ldm.tracking.registry import aliases_by_version, all_versions
    from ldm.tracking.runs import store_client

    name = cfg.registry.model_name
    client = store_client(paths.root)
    versions = all_versions(client, name)
    if not versions:
        typer.echo(f"no versions of {name} yet: the `report` stage of `ldm run` registers them")
        return
    held = aliases_by_version(client, name)
    table = Table(title=f"{name} (newest first)")
    for column in (
        "version",
        "aliases",
        "variant",
        "seed",
        "gFD",
        "rel. FD",
        "precision",
        "recall",
    ):
        table.add_column(column, justify="left" if column in ("aliases", "variant") else "right")
    for column in ("PSNR", "cost USD", "registered"):
        table.add_column(column, justify="right")
    for v in versions:
        tags = v.tags
        net = tags.get("feature_net", "")
        fd = tags.get(f"gfd_{net}")
        table.add_row(
            str(v.version),
            ", ".join(held.get(str(v.version), [])),
            tags.get("variant", ""),
            tags.get("seed", ""),
            f"{fd} ({net})" if fd else "",
            tags.get("relative_fd", ""),
            tags.get("precision", ""),
            tags.get("recall", ""),
            tags.get("psnr", ""),
            tags.get("cost_usd", ""),
            _date(v.creation_timestamp),
        )
    Console().print(table)


def _date(millis: int | None) -> str:
    from datetime import UTC, datetime

    return "" if not millis else datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d")


@app.command()
def serve(
    alias: Annotated[str, typer.Option(help="Serve the version that holds this alias.")] = (
        "production"
    ),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5001,
    params: ParamsOption = None,
    overrides: SetOption = None,
) -> None:
    """Serve a registered generator with MLflow's scoring server (POST /invocations)."""
    import subprocess

    paths, cfg = open_project(params, overrides)
    from ldm.tracking.registry import resolve_alias
    from ldm.tracking.runs import store_client
    from ldm.tracking.servers import serve_command, server_env

    name = cfg.registry.model_name
    with user_errors():
        found = resolve_alias(store_client(paths.root), name, alias)
    uri = f"models:/{name}@{alias}"
    typer.echo(
        f"serving {uri} (version {found.version}) at http://127.0.0.1:{port}/invocations; "
        'POST {"dataframe_records": [{"class_id": 0, "n": 4, "seed": 0}]} (Ctrl+C to stop)'
    )
    done = subprocess.run(serve_command(uri, port), env=server_env(paths.root), check=False)
    raise typer.Exit(done.returncode)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    screenshots: Annotated[
        Path | None,
        typer.Option(
            help="Start the UI, save PNGs of the runs table, the newest trial's run and the "
            "registered model (and the UI's log) into this folder, stop the UI (needs Chromium)."
        ),
    ] = None,
    budget_ms: Annotated[
        int, typer.Option(min=1000, help="Virtual time Chromium gives each page to render.")
    ] = 10000,
    params: ParamsOption = None,
    overrides: SetOption = None,
) -> None:
    """Open the MLflow UI on the project's tracking store (runs table of the experiment)."""
    import subprocess

    paths, cfg = open_project(params, overrides)
    from ldm.tracking.runs import remote_ui, tracking_uri
    from ldm.tracking.servers import server_env, take_screenshots, ui_command, ui_pages

    experiment, name = cfg.tracking.experiment, cfg.registry.model_name
    if screenshots is not None:
        with user_errors():
            written = take_screenshots(paths.root, experiment, name, port, screenshots, budget_ms)
        for path in written:
            typer.echo(f"wrote {path}")
        return
    remote = remote_ui(paths.root)
    pages = ui_pages(paths.root, experiment, name, remote or f"http://127.0.0.1:{port}")
    if remote:
        typer.echo(f"the tracking server serves the UI: {pages.runs}")
        return
    typer.echo(f"MLflow UI for {tracking_uri(paths.root)}: {pages.runs} (Ctrl+C to stop)")
    subprocess.run(ui_command(paths.root, port), env=server_env(paths.root), check=False)
