"""The trial as a Prefect flow through DVC, on a real (test) Prefect server and MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from prefect.states import Failed

from flows.stage_run import StageFailed
from flows.trial import is_transient
from ldm.config import load
from ldm.stages import stage_names
from tests.conftest import BenchTrial, ldm_run

pytestmark = pytest.mark.slow


def runs_by_name(root: Path) -> dict[str, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ldm-poc")
    found: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id]):
        found.setdefault(run.info.run_name, []).append(run)
    return found


def trial_runs(root: Path) -> dict[str, object]:
    """The trials' parent runs in MLflow, by run id."""
    trials = [
        run
        for name, runs in runs_by_name(root).items()
        if name.startswith("trial ")
        for run in runs
    ]
    return {run.info.run_id: run for run in trials}


def stage_list(output: str, names: list[str]) -> dict[str, str]:
    """What `ldm run` lists at the end, in its order: each stage and "ran" or "skipped"."""
    listed = [line.split() for line in output.splitlines()]
    return {
        words[0]: words[1]
        for words in listed
        if len(words) == 2 and words[0] in names and words[1] in ("ran", "skipped")
    }


def parent_id_of(output: str) -> str:
    """The trial's MLflow run, from the link `ldm run` ends with."""
    url = next(line.split()[1] for line in output.splitlines() if line.startswith("MLflow: "))
    return url.rsplit("/", 1)[1]


def dvc(root: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_ldm_run_runs_each_stage_through_dvc_shows_the_answer_and_reruns_only_what_changed(
    bench_trial: BenchTrial, bench_trial_copy: Path, prefect_server
) -> None:
    # The first trial and its re-run are the benchmark's (`bench_trial`); the rest, on a copy.
    project, table = bench_trial_copy, bench_trial.table
    names = stage_names(load(project / "params.yaml"))
    assert names[0] == "validate" and "train_diffusion@plain-0" in names

    # The benchmark's table: each stage run's own wall time, the overhead, the re-run.
    lines = table.splitlines()
    assert lines[0].split() == ["stage", "wall", "s"], table
    end = next(i for i, line in enumerate(lines) if line.startswith("stages, sum"))
    rows = dict(line.rsplit(None, 1) for line in lines[1:end])  # stage run -> wall seconds
    assert sorted(rows) == sorted(names), table
    # Each its own wall time (a toy prepare may round to 0.0 s), and they add up.
    assert all(float(seconds) >= 0 for seconds in rows.values()), table
    total = float(lines[end].rsplit(None, 1)[1])
    assert total > 0 and abs(total - sum(map(float, rows.values()))) <= 0.05 * len(rows), table
    for row in ("orchestration", "trial (ldm run)", "re-run, no change", "machine probe"):
        assert any(line.startswith(row) for line in lines), table
    assert "note: the re-run ran stages" not in table, table  # nothing changed, nothing ran

    out = bench_trial.first
    lines = out.splitlines()
    # --set is written into params.yaml first, so that DVC and the records agree on what ran.
    assert "prepare.shard_size: 1024 -> 50" in out
    assert "shard_size: 50" in (project / "params.yaml").read_text()
    # Every stage ran, in DAG order, and the terminal lists them.
    listed = stage_list(out, names)
    assert list(listed) == names and set(listed.values()) == {"ran"}
    # The stages' own lines reach the terminal as they come, without DVC's git hints.
    assert any(line.strip().startswith("train_tokenizer@plain-0  2/2") for line in lines)
    assert "git add" not in out and "autostage" not in out and "Traceback" not in out
    # It ends with the answer: the table, the recommendation, the report and the run.
    assert "Trial answer" in out and "recommended: plain" in out
    assert "ldm promote 1 --to staging" in out
    assert f"Report: {bench_trial.root / 'data/reports/report.html'}" in out

    # One MLflow run per stage, each nested under the trial's run, which records the trial.
    parent_id = parent_id_of(out)
    runs = runs_by_name(project)
    for stage in names:
        (stage_run,) = runs[stage]
        assert stage_run.data.tags["mlflow.parentRunId"] == parent_id
        assert stage_run.info.status == "FINISHED"
    (parent,) = trial_runs(project).values()
    assert parent.info.run_id == parent_id
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.data.metrics["stages_ran"] == len(names)
    assert parent.data.tags["stage.prepare"] == "ran"
    assert parent.data.params["set.prepare.shard_size"] == "50"  # reproducible from its record
    # Every setting, the key numbers of each variant and the decision, on the trial's run.
    assert parent.data.params["prepare.shard_size"] == "50"
    assert parent.data.params["evaluate.features"] == "effnet_lite2"
    assert parent.data.tags["decision"].startswith("recommended: plain")
    assert {"quality/plain/gfd", "quality/plain/relative_fd"} <= set(parent.data.metrics)
    assert parent.data.metrics["cost/usd"] > 0 and parent.data.metrics["cost/plain/usd"] > 0
    # DVC's record of every stage, and the params reached the stages.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(names)
    assert json.loads((project / "data/prepared/meta.json").read_text())["resolution"] == 16

    # Nothing changed (the benchmark's re-run): no stage runs, no new trial run clutters MLflow,
    # the answer is shown again.
    again = bench_trial.rerun
    assert "Nothing changed since the last trial: no stage ran." in again
    assert "Trial answer" in again
    assert not any(line.split()[-1:] == ["ran"] for line in again.splitlines())
    assert list(trial_runs(project)) == [parent_id]

    # A changed param reruns exactly the stages that read it, and what depends on their output:
    # evaluate reads evaluate.nearest_k, the report reads evaluate's metrics. DVC skips the rest,
    # and a skipped stage logs no new run.
    changed = ldm_run(project, "--set", "evaluate.nearest_k=2")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    listed = stage_list(changed.stdout, names)
    assert list(listed) == names
    assert [stage for stage, status in listed.items() if status == "ran"] == [
        "evaluate@plain-0",
        "report",
    ]
    evaluated = json.loads((project / "data/metrics/evaluate@plain-0.json").read_text())
    assert evaluated["generation"]["nearest_k"] == 2
    second_id = parent_id_of(changed.stdout)
    assert second_id != parent_id
    second = trial_runs(project)[second_id]
    assert second.data.tags["stage.prepare"] == "skipped"
    assert second.data.metrics["stages_ran"] == 2
    runs = runs_by_name(project)
    assert {stage: len(runs[stage]) for stage in names} == dict.fromkeys(names, 1) | {
        "evaluate@plain-0": 2,
        "report": 2,
    }
    assert {run.data.tags["mlflow.parentRunId"] for run in runs["evaluate@plain-0"]} == {
        parent_id,
        second_id,
    }

    # Each variant's stages read only that variant's settings: a variant added to the trial
    # runs its own branch, the plain one is skipped (and the report, which reads every variant).
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["variants"]["aligned"] = {"preset": "f4d8", "align": True}
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    names = stage_names(load(project / "params.yaml"))
    widened = ldm_run(project)
    assert widened.returncode == 0, widened.stdout + widened.stderr
    listed = stage_list(widened.stdout, names)
    assert list(listed) == names
    assert [stage for stage, status in listed.items() if status == "ran"] == [
        "train_tokenizer@aligned-0",
        "encode@aligned-0",
        "train_diffusion@aligned-0",
        "evaluate@aligned-0",
        "report",
    ]
    third_id = parent_id_of(widened.stdout)
    runs = runs_by_name(project)
    for stage in ("train_tokenizer@plain-0", "encode@plain-0", "train_diffusion@plain-0"):
        assert len(runs[stage]) == 1, stage
    for stage in ("train_tokenizer@aligned-0", "evaluate@aligned-0"):
        (stage_run,) = runs[stage]
        assert stage_run.data.tags["mlflow.parentRunId"] == third_id
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(names)

    # `dvc repro` in the same checkout agrees that nothing is left to do.
    repro = dvc(project, "repro")
    assert "didn't change, skipping" in repro
    assert "Running stage" not in repro
    metrics = dvc(project, "metrics", "show", "--json")
    assert "evaluate@aligned-0.json" in metrics and "fd_effnet_lite2" in metrics


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (StageFailed("validate", 1, "quality suite failed"), False),
        (StageFailed("validate", 2, "bad config"), False),
        (StageFailed("validate", 3, "unexpected error"), True),
        (StageFailed("train", -9, "killed"), True),
        (StageFailed("train", None, "timed out"), True),
        (OSError("database is locked"), True),
    ],
)
def test_only_transient_failures_are_retried(error: Exception, retry: bool) -> None:
    assert is_transient(None, None, Failed(data=error)) is retry
