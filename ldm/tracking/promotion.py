"""Promotion: who may hold the `candidate`, `staging` and `production` aliases, and the record.

A version reaches `staging` or `production` only through the gates of `promotion.gates.<stage>`,
read against the numbers stored on the version at registration (tags `gate_values` and
`gate_intervals`: a gate reads the far end of an interval where there is one); production
also requires that the version once held staging. `--force` overrides failed gates with a reason,
and says so in the record. Each move gives the previous holder `previous-<stage>`, which is what
`rollback` returns the alias to.

Every move is recorded twice: as tags on the version (`promotion.<stage>.by`, `.at`, `.reason`,
`.forced`, `.gates`, `.metrics`), and as a row of the promotion log, a Markdown table in the
registered model's description (the MLflow UI shows it on the model's page), newest first, as many
rows as MLflow keeps of a description.
"""

from __future__ import annotations

import getpass
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ldm.config import Gates
from ldm.errors import LdmError
from ldm.report.gates import check_gates
from ldm.tracking.registry import (
    GATE_INTERVALS_TAG,
    GATE_VALUES_TAG,
    INTRO,
    get_version,
    resolve_alias,
)
from ldm.tracking.runs import store_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CANDIDATE = "candidate"
STAGES = ("staging", "production")
HELD_STAGING_TAG = "held_staging"
METRIC_TAGS = ("feature_net", "relative_fd", "precision", "recall", "psnr", "cost_usd")
DESCRIPTION_LIMIT = 5000  # characters MLflow's SQL store keeps of a description
LOG_COLUMNS = ("at", "by", "action", "version", "alias", "forced", "reason", "gates")
TABLE_HEADER = "| when (UTC) | who | action | version | alias | forced | reason | gates |"
FOOTER = "\nEvery move is also recorded in the version's `promotion.*` / `rollback.*` tags.\n"


@dataclass(frozen=True)
class Move:
    """What one promotion, rollback or candidate change did."""

    version: str  # the version that holds the alias now
    alias: str
    previous: str | None  # the version that held it before
    forced: bool
    gates: tuple[str, ...]  # each gate's `describe()`
    changed: bool  # False: the version already held the alias; nothing was written


class PromotionRefused(LdmError):
    def __init__(self, version: str, stage: str, failures: list[str]) -> None:
        self.failures = failures
        lines = "\n".join(f"  {line}" for line in failures)
        super().__init__(
            f"version {version} may not hold {stage}; failed:\n{lines}\n"
            "Promote a better version, or override with --force --reason TEXT (recorded)."
        )


def previous_alias(stage: str) -> str:
    return f"previous-{stage}"


def who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return os.environ.get("USER", "unknown")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def set_candidate(root: Path, model_name: str, version: str, reason: str) -> Move:
    """Give `candidate` to the version the report recommends (no gates: a proposal)."""
    client = store_client(root)
    get_version(client, model_name, version)
    holder = _holder(client, model_name, CANDIDATE)
    if holder != version:
        client.set_registered_model_alias(model_name, CANDIDATE, version)
        _append_log(client, model_name, _entry("candidate", version, CANDIDATE, False, reason, []))
    return Move(version, CANDIDATE, holder, False, (), changed=holder != version)


def clear_candidate(root: Path, model_name: str, reason: str) -> str | None:
    """Take `candidate` away (a trial that recommends nothing); the version that held it."""
    client = store_client(root)
    holder = _holder(client, model_name, CANDIDATE)
    if holder is not None:
        client.delete_registered_model_alias(model_name, CANDIDATE)
        _append_log(client, model_name, _entry("uncandidate", holder, CANDIDATE, False, reason, []))
    return holder


def check_promotion(version: ModelVersion, stage: str, gates: Gates) -> tuple[list[str], list[str]]:
    """(every gate's result line, the failed ones) for `version` and `stage`."""
    values = json.loads(version.tags.get(GATE_VALUES_TAG, "{}"))
    # versions registered before intervals carry points only: their gates read the point
    intervals = json.loads(version.tags.get(GATE_INTERVALS_TAG, "{}"))
    results = check_gates(gates, values, intervals)
    lines = [r.describe() for r in results]
    failures = [r.describe() for r in results if not r.passed]
    if stage == "production":
        held = version.tags.get(HELD_STAGING_TAG)
        line = (
            f"held_staging: since {held} passed"
            if held
            else f"held_staging: version {version.version} never held staging FAILED"
        )
        lines.append(line)
        if not held:
            failures.append(line)
    return lines, failures


def promote(
    root: Path,
    model_name: str,
    version: str,
    stage: str,
    gates: Gates,
    reason: str | None,
    force: bool,
) -> Move:
    """Give `stage` to `version` if it passes the gates (or `force` with a reason); record it."""
    if stage not in STAGES:
        raise LdmError(f"unknown stage {stage!r}; promote to one of {', '.join(STAGES)}")
    if force and not (reason and reason.strip()):
        raise LdmError("--force needs --reason TEXT: an override is recorded with its reason")
    client = store_client(root)
    found = get_version(client, model_name, version)
    holder = _holder(client, model_name, stage)
    lines, failures = check_promotion(found, stage, gates)
    if holder == version:
        return Move(version, stage, holder, False, tuple(lines), changed=False)
    if failures and not force:
        raise PromotionRefused(version, stage, failures)
    forced = bool(failures)
    at, by = now(), who()
    if holder is not None:
        client.set_registered_model_alias(model_name, previous_alias(stage), holder)
    client.set_registered_model_alias(model_name, stage, version)
    distance = ("gfd_", "rfd_")  # named after their feature network
    metrics = {k: v for k, v in found.tags.items() if k in METRIC_TAGS or k.startswith(distance)}
    record = {
        "at": at,
        "by": by,
        "reason": reason or "",
        "forced": str(forced).lower(),
        "gates": json.dumps(lines),
        "metrics": json.dumps(metrics, sort_keys=True),
        "previous": holder or "",
    }
    for key, value in record.items():
        client.set_model_version_tag(model_name, version, f"promotion.{stage}.{key}", value)
    if stage == "staging" and HELD_STAGING_TAG not in found.tags:
        client.set_model_version_tag(model_name, version, HELD_STAGING_TAG, at)
    _append_log(client, model_name, _entry("promote", version, stage, forced, reason, lines, at))
    return Move(version, stage, holder, forced, tuple(lines), changed=True)


def rollback(root: Path, model_name: str, stage: str, reason: str | None) -> Move:
    """Give `stage` back to its previous holder; the holder it had becomes `previous-<stage>`,
    so a second rollback undoes the first."""
    if stage not in STAGES:
        raise LdmError(f"unknown stage {stage!r}; roll back one of {', '.join(STAGES)}")
    client = store_client(root)
    try:
        back = str(resolve_alias(client, model_name, previous_alias(stage)).version)
    except LdmError:
        raise LdmError(
            f"nothing to roll back: no version of {model_name} held {stage} before the current one"
        ) from None
    holder = _holder(client, model_name, stage)
    at, by = now(), who()
    client.set_registered_model_alias(model_name, stage, back)
    if holder is not None:
        client.set_registered_model_alias(model_name, previous_alias(stage), holder)
    else:
        client.delete_registered_model_alias(model_name, previous_alias(stage))
    for key, value in {"at": at, "by": by, "reason": reason or "", "from": holder or ""}.items():
        client.set_model_version_tag(model_name, back, f"rollback.{stage}.{key}", value)
    note = [f"from version {holder}"] if holder else []
    _append_log(client, model_name, _entry("rollback", back, stage, False, reason, note, at))
    return Move(back, stage, holder, False, (), changed=True)


def _holder(client: MlflowClient, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def _entry(
    action: str,
    version: str,
    alias: str,
    forced: bool,
    reason: str | None,
    gates: list[str],
    at: str | None = None,
) -> dict[str, str]:
    return {
        "at": at or now(),
        "by": who(),
        "action": action,
        "version": version,
        "alias": alias,
        "forced": "yes" if forced else "no",
        "reason": reason or "",
        "gates": "; ".join(gates),
    }


def read_log(client: MlflowClient, model_name: str) -> list[dict[str, str]]:
    """The promotion log as the description shows it, oldest first."""
    return parse_log(client.get_registered_model(model_name).description or "")


def parse_log(description: str) -> list[dict[str, str]]:
    """The rows of the log table in a description, oldest first."""
    lines = description.splitlines()
    if TABLE_HEADER not in lines:
        return []
    rows = []
    for line in lines[lines.index(TABLE_HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == len(LOG_COLUMNS):  # a row someone edited by hand may not parse
            rows.append(dict(zip(LOG_COLUMNS, cells, strict=True)))
    return rows[::-1]


def _append_log(client: MlflowClient, model_name: str, entry: dict[str, str]) -> None:
    log = [*read_log(client, model_name), entry]
    client.update_registered_model(model_name, description=render_description(log))


def render_description(log: list[dict[str, str]]) -> str:
    """The intro and the log as a Markdown table, newest first, cut to what MLflow stores
    (the oldest rows go; each move stays in its version's tags)."""
    text = f"{INTRO}\n\n### Promotion log\n\n{TABLE_HEADER}\n{'|---' * len(LOG_COLUMNS)}|\n"
    for entry in reversed(log):
        row = "| " + " | ".join(_cell(entry.get(column, "")) for column in LOG_COLUMNS) + " |\n"
        if len(text) + len(row) + len(FOOTER) > DESCRIPTION_LIMIT:
            break
        text += row
    return text + FOOTER


def _cell(text: str) -> str:
    return text.replace("\n", " ").rstrip("\\").replace("|", "\\|")
