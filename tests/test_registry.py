"""The model registry: a registered generator samples like the in-process one, registers once per
weights, and moves between aliases only through the gates, with a record of every move."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image
from typer.testing import CliRunner

from ldm import config
from ldm.cli import app
from ldm.generate import generate
from ldm.tracking.promotion import (
    PromotionRefused,
    parse_log,
    promote,
    read_log,
    render_description,
    rollback,
    set_candidate,
)
from ldm.tracking.pyfunc import decode_png
from ldm.tracking.registry import Registration
from tests.generators import MODEL, evaluation, register, trial_run_id, write_generator

runner = CliRunner()


def client_for(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def aliases(root: Path) -> dict[str, str]:
    held = client_for(root).get_registered_model(MODEL).aliases
    return {alias: str(version) for alias, version in held.items()}


def test_registered_generator_samples_like_the_in_process_model(
    registry_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = registry_project
    run_id = trial_run_id(root)
    registered = register(root, evaluation(), run_id)
    assert registered == Registration("1", created=True)
    set_candidate(root, MODEL, "1", "the best relative FD")

    tags = client_for(root).get_model_version(MODEL, "1").tags
    assert tags["variant"] == "plain" and tags["trial_run_id"] == run_id
    assert tags["gfd_effnet_lite2"] == "30" and tags["rfd_effnet_lite2"] == "5"
    assert tags["relative_fd"] == "0.4" and tags["precision"] == "0.5"
    assert tags["git_commit"] == "c" * 40 and tags["data_manifest_sha256"] == "m" * 64
    assert json.loads(tags["gate_values"])["max_relative_fd"] == pytest.approx(0.4)

    settings = config.load(root / "params.yaml").sample.model_copy(update={"seed": 7})
    expected = generate(
        root / "data/checkpoints/diffusion-plain-0",
        root,
        3,
        "stripe",
        settings,
        torch.device("cpu"),
    )
    # The version decodes with its own tokenizer, whatever is on disk later.
    write_generator(root / "elsewhere", seed=1)
    shutil.copytree(
        root / "elsewhere/data/checkpoints/tokenizer-plain-0",
        root / "data/checkpoints/tokenizer-plain-0",
        dirs_exist_ok=True,
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}@candidate")
    request = pd.DataFrame({"class_id": [2], "n": [3], "seed": [7]})
    first, second = loaded.predict(request), loaded.predict(request)
    assert list(first["index"]) == [0, 1, 2] and set(first["class_name"]) == {"stripe"}
    got = np.stack([decode_png(png) for png in first["png"]])
    np.testing.assert_array_equal(got, expected)
    assert list(first["png"]) == list(second["png"])
    other_seed = loaded.predict(request.assign(seed=8))
    assert list(other_seed["png"]) != list(first["png"])
    with pytest.raises(
        MlflowException, match=r"class_id 5 .* 0 \(disc\), 1 \(ring\), 2 \(stripe\)"
    ):
        loaded.predict(pd.DataFrame({"class_id": [5], "n": [1], "seed": [0]}))


def test_same_weights_register_once_changed_weights_again(registry_project: Path) -> None:
    root = registry_project
    run_id = trial_run_id(root)
    assert register(root, evaluation(), run_id) == Registration("1", created=True)
    assert register(root, evaluation(fd=25.0), run_id) == Registration("1", created=False)
    client = client_for(root)
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    assert client.get_model_version(MODEL, "1").tags["gfd_effnet_lite2"] == "25"

    write_generator(root, seed=1)
    assert register(root, evaluation(), run_id) == Registration("2", created=True)
    tags = [client.get_model_version(MODEL, v).tags for v in ("1", "2")]
    assert tags[0]["diffusion_sha256"] != tags[1]["diffusion_sha256"]


def test_gates_refuse_allow_and_record_a_forced_promotion(registry_project: Path) -> None:
    root = registry_project
    run_id = trial_run_id(root)
    register(root, evaluation(fd=55.0), run_id)  # relative FD 0.9: fails staging (0.8)
    refused = runner.invoke(app, ["promote", "1", "--to", "staging"])
    assert refused.exit_code == 1
    assert "max_relative_fd: 0.9 <= 0.8 FAILED" in refused.stderr
    assert "staging" not in aliases(root)
    no_reason = runner.invoke(app, ["promote", "1", "--to", "staging", "--force"])
    assert no_reason.exit_code == 2 and "--reason" in no_reason.stderr
    looser = ["--set", "promotion.gates.staging.max_relative_fd=0.95"]
    assert runner.invoke(app, ["promote", "1", "--to", "staging", *looser]).exit_code == 0
    assert aliases(root) == {"staging": "1"}

    write_generator(root, seed=1)
    register(root, evaluation(fd=55.0), run_id)
    forced = runner.invoke(
        app, ["promote", "2", "--to", "staging", "--force", "--reason", "demo for the board"]
    )
    assert forced.exit_code == 0, forced.output
    assert "FORCED" in forced.output
    assert aliases(root) == {"staging": "2", "previous-staging": "1"}
    tags = client_for(root).get_model_version(MODEL, "2").tags
    assert tags["promotion.staging.forced"] == "true"
    assert tags["promotion.staging.reason"] == "demo for the board"
    assert "max_relative_fd: 0.9 <= 0.8 FAILED" in json.loads(tags["promotion.staging.gates"])
    assert json.loads(tags["promotion.staging.metrics"])["gfd_effnet_lite2"] == "55"
    assert tags["promotion.staging.by"] and tags["promotion.staging.at"] and tags["held_staging"]
    description = client_for(root).get_registered_model(MODEL).description
    assert "| promote | 2 | staging | yes | demo for the board |" in description


def test_production_needs_staging_first(registry_project: Path) -> None:
    root = registry_project
    register(root, evaluation(fd=20.0), trial_run_id(root))  # passes every gate
    gates = config.load(root / "params.yaml").promotion.gates
    with pytest.raises(PromotionRefused, match="never held staging"):
        promote(root, MODEL, "1", "production", gates.production, None, False)
    refused = runner.invoke(app, ["promote", "1", "--to", "production"])
    assert refused.exit_code == 1 and "held_staging" in refused.stderr
    promote(root, MODEL, "1", "staging", gates.staging, "first look", False)
    move = promote(root, MODEL, "1", "production", gates.production, "approved", False)
    assert move.changed and not move.forced
    assert "held_staging: since" in move.gates[-1]
    assert aliases(root) == {"staging": "1", "production": "1"}


def test_promote_then_rollback_restores_the_previous_holder(
    registry_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = registry_project
    run_id = trial_run_id(root)
    gates = config.load(root / "params.yaml").promotion.gates.staging
    register(root, evaluation(), run_id)
    write_generator(root, seed=1)
    register(root, evaluation(fd=15.0), run_id)
    assert runner.invoke(app, ["rollback", "staging"]).exit_code == 1  # nothing held it yet
    promote(root, MODEL, "1", "staging", gates, None, False)
    promote(root, MODEL, "2", "staging", gates, None, False)
    assert aliases(root) == {"staging": "2", "previous-staging": "1"}

    result = runner.invoke(app, ["rollback", "staging", "--reason", "artefacts"])
    assert result.exit_code == 0, result.output
    assert aliases(root) == {"staging": "1", "previous-staging": "2"}
    log = read_log(client_for(root), MODEL)
    assert [(e["action"], e["version"]) for e in log] == [
        ("promote", "1"),
        ("promote", "2"),
        ("rollback", "1"),
    ]
    assert log[-1]["reason"] == "artefacts" and log[-1]["gates"] == "from version 2"
    rollback(root, MODEL, "staging", None)  # a second rollback undoes the first
    assert aliases(root) == {"staging": "2", "previous-staging": "1"}

    monkeypatch.setenv("COLUMNS", "200")  # the width rich lays the table out for
    listed = runner.invoke(app, ["models"])
    assert listed.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in listed.output.splitlines() if "│" in line}
    assert "previous-staging" in rows["1"] and "staging" in rows["2"]
    assert "15 (effnet_lite2)" in rows["2"]


def test_promotion_log_keeps_the_newest_rows_that_fit_a_description() -> None:
    entries = [
        {"at": f"2030-01-01 00:00:{i:02d}Z", "by": "ana", "action": "promote", "version": str(i),
         "alias": "staging", "forced": "no", "reason": f"round {i} | a|b\\", "gates": "x" * 80}
        for i in range(60)
    ]  # fmt: skip
    text = render_description(entries)
    assert len(text) <= 5000
    kept = parse_log(text)
    assert 10 < len(kept) < 60
    assert kept[-1]["version"] == "59" and kept[-1]["reason"] == "round 59 | a|b"
    assert [e["version"] for e in kept] == [str(i) for i in range(60 - len(kept), 60)]


def test_sample_from_the_registry_by_class_name_or_id(
    registry_project: Path, tmp_path: Path
) -> None:
    root = registry_project
    register(root, evaluation(), trial_run_id(root))
    set_candidate(root, MODEL, "1", "the only one")
    uri = f"models:/{MODEL}@candidate"
    by_name, by_id = tmp_path / "by-name", tmp_path / "by-id"
    for out, chosen in ((by_name, "ring"), (by_id, "1")):
        result = runner.invoke(
            app, ["sample", str(out), "--model", uri, "-n", "3", "--class", chosen]
        )
        assert result.exit_code == 0, result.output
    files = sorted(p.name for p in by_name.iterdir())
    assert files == [f"sample-0000{i}.png" for i in range(3)]
    assert all((by_name / f).read_bytes() == (by_id / f).read_bytes() for f in files)

    grid = tmp_path / "grid.png"
    assert runner.invoke(app, ["sample", str(grid), "--model", uri, "-n", "5"]).exit_code == 0
    assert Image.open(grid).size == (5 * 16, 16)
    unknown = runner.invoke(app, ["sample", str(grid), "--model", uri, "--class", "cube"])
    assert unknown.exit_code == 1 and "disc (0), ring (1), stripe (2)" in unknown.stderr
    both = runner.invoke(app, ["sample", str(grid), "--model", uri, "--variant", "plain"])
    assert both.exit_code == 2
    missing = runner.invoke(app, ["sample", str(grid), "--model", f"models:/{MODEL}@production"])
    assert missing.exit_code == 1 and "production" in missing.stderr
