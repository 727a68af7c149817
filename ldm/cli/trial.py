"""`ldm run`: the whole trial as a Prefect flow in a child process (`ldm` never imports Prefect)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ldm.cli.common import EXIT_USER, SetOption, app, fail, load_config
from ldm.cli.tools import sample_data
from ldm.paths import Paths


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
    from ldm.params_file import write_overrides

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
