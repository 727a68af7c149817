"""MLflow's servers on the project's store: `ldm serve` answers real HTTP requests with PNGs, and
`ldm ui --screenshots` captures the rendered UI."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ldm import config
from ldm.cli import app
from ldm.tracking.promotion import promote
from tests.conftest import REPO
from tests.generators import evaluation, register, trial_run_id

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def test_serve_answers_a_post_with_pngs(registry_project: Path, tmp_path: Path) -> None:
    root = registry_project
    register(root, evaluation(fd=20.0), trial_run_id(root))
    gates = config.load(root / "params.yaml").promotion.gates
    promote(root, "ldm-generator", "1", "staging", gates.staging, None, False)
    promote(root, "ldm-generator", "1", "production", gates.production, None, False)

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "serve.log").open("wb")
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "ldm", "serve", "--alias", "production", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill below reaches uvicorn too
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server, timeout=240)
        up = time.monotonic() - started
        url = f"http://127.0.0.1:{port}/invocations"
        split = {"dataframe_split": {"columns": ["class_id", "n", "seed"], "data": [[1, 2, 3]]}}
        status, body = post(url, split)
        assert status == 200, body
        rows = body["predictions"]
        assert [(r["class_id"], r["index"], r["seed"]) for r in rows] == [(1, 0, 3), (1, 1, 3)]
        for row in rows:
            with Image.open(io.BytesIO(base64.b64decode(row["png"]))) as image:
                assert image.format == "PNG" and image.size == (16, 16)
                assert np.asarray(image).std() > 0
        records = {"dataframe_records": [{"class_id": 1, "n": 2, "seed": 3, "steps": 4}]}
        assert [r["png"] for r in post(url, records)[1]["predictions"]] == [r["png"] for r in rows]
        status, body = post(url, {"dataframe_records": [{"class_id": 9, "n": 1, "seed": 0}]})
        assert status == 400 and "class_id 9" in body["message"]
        print(f"\nldm serve: /ping answered after {up:.1f} s")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)"
)
def test_ui_screenshots_show_the_trial_and_the_model(
    registry_project: Path, tmp_path: Path
) -> None:
    root = registry_project
    register(root, evaluation(), trial_run_id(root))
    gates = config.load(root / "params.yaml").promotion.gates.staging
    promote(root, "ldm-generator", "1", "staging", gates, "first look", False)
    folder = tmp_path / "shots"
    started = time.monotonic()
    result = runner.invoke(app, ["ui", "--screenshots", str(folder), "--port", str(free_port())])
    assert result.exit_code == 0, result.output
    print(f"\nldm ui --screenshots: {time.monotonic() - started:.1f} s")
    for name in ("runs.png", "trial.png", "model.png"):
        with Image.open(folder / name) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.shape == (1000, 1600)
        # A rendered page has text (dark, anti-aliased: many grey levels); a blank page has not.
        assert (pixels < 128).mean() > 0.003, name
        assert len(np.unique(pixels)) > 100, name


def test_screenshots_without_chromium_say_what_to_install(
    registry_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = runner.invoke(app, ["ui", "--screenshots", str(tmp_path / "shots")])
    assert result.exit_code == 1
    assert "Chromium" in result.stderr and "apt-get install chromium" in result.stderr
    assert not (tmp_path / "shots").exists()  # nothing was started
