"""Small text helpers of the report: Markdown tables, escaping, durations, shares."""

from __future__ import annotations

import re


def escape(text: str) -> str:
    """Free text from outside (trial name, device names) shown literally, not read as Markdown.

    Variant names need none: the config limits them to letters, digits, '-' and '_'.
    """
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", text)


NUMBER = re.compile(r"^[-−$]?\d|^—$")


def table(columns: list[str], rows: list[list[str]]) -> str:
    """A pipe table; columns of numbers right-aligned, text left-aligned.

    A few lines of our own instead of a dependency: the cells are already formatted strings.
    """
    numeric = [all(NUMBER.match(row[i]) for row in rows) for i in range(len(columns))]
    rule = "|".join("--:" if right else ":--" for right in numeric)
    lines = ["| " + " | ".join(columns) + " |", f"|{rule}|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def wall(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def percent(share: float) -> str:
    return f"{100 * share:.0f}%"
