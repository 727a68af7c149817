"""`ldm deploy`: make this checkout the one a GPU host's work pool runs stages in."""

from __future__ import annotations

from typing import Annotated

import typer

from ldm.cli.common import EXIT_USAGE, EXIT_USER, ParamsOption, app, fail, open_project
from ldm.paths import Paths


@app.command()
def deploy(
    pool: Annotated[
        str | None,
        typer.Option(help="The Prefect work pool to serve [default: orchestration.gpu_pool]."),
    ] = None,
    params: ParamsOption = None,
) -> None:
    """Register this checkout (on the GPU host) as where POOL's worker runs remote stages.

    Trials with `orchestration.gpu_pool: POOL` then send their `orchestration.gpu_stages` here.
    Needs PREFECT_API_URL set to the team's Prefect server; creates the work pool (type
    process) when it is missing. Serve it with `prefect worker start --pool POOL --limit 1`.
    """
    import os
    import subprocess
    import sys

    paths = Paths.discover()
    pool = pool or open_project(params, None)[1].orchestration.gpu_pool
    if not pool:
        raise fail("name the work pool: --pool NAME (or set orchestration.gpu_pool)", EXIT_USAGE)
    command = [sys.executable, "-m", "flows.remote", "deploy", str(paths.root), "--pool", pool]
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
    if subprocess.run(command, env=env, check=False).returncode != 0:
        raise fail(f"the deployment for {pool!r} was not registered (see above)", EXIT_USER)
