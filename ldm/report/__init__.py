"""The trial's report: the page a reader uses to decide, and the summary `ldm run` prints.

`write_report(out_dir, records, curves, report=..., gates=..., prices=..., header=...)` writes
report.md, report.html (self-contained), the charts and summary.json; `summary_rows(summary)`
gives the terminal table, from a `ReportSummary` returned or read back from summary.json.
Importing this package loads neither numpy nor matplotlib: the CLI stays quick to start.
"""

from ldm.report.summary import ReportHeader, ReportSummary, summary_rows
from ldm.report.write import summarise, write_report

__all__ = [
    "ReportHeader",
    "ReportSummary",
    "summarise",
    "summary_rows",
    "write_report",
]
