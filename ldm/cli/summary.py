"""The table `ldm run` ends with: per variant the key numbers, the cost, the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def print_summary(summary_file: Path) -> None:
    """Print the report's summary (data/reports/summary.json) as a table, then where it lies."""
    from rich.console import Console
    from rich.table import Table

    from ldm.report import ReportSummary, summary_rows

    summary = ReportSummary.read(summary_file)
    terminal = summary_rows(summary)
    table = Table(title=f"Trial answer: gFD target {summary.target_fd:g}", title_justify="left")
    for column in terminal.columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in terminal.rows:
        table.add_row(*row)
    Console(width=200).print(table)
    typer.echo(terminal.note)
    typer.echo(terminal.recommendation)
    registry = summary_file.parent / "registry.json"
    if registry.is_file():
        versions = json.loads(registry.read_text())
        listed = ", ".join(f"{v} = version {n}" for v, n in versions["versions"].items())
        typer.echo(f"Registered as {versions['model_name']}: {listed}")
        if versions["candidate"]:
            typer.echo(
                f"Promote the candidate: ldm promote {versions['candidate']} --to staging "
                '--reason "..."'
            )
        elif versions.get("candidate_withdrawn"):
            typer.echo(
                f"Version {versions['candidate_withdrawn']} no longer holds `candidate`: this "
                "trial recommends no variant."
            )
    typer.echo(f"Report: {summary_file.parent / 'report.html'}")
