"""MLflow's own servers on the project's store: the UI and the model scoring server.

Both run as child processes (`python -m mlflow ...`), in their own process group so that
stopping one stops the workers it started. Screenshots of the UI come from headless Chromium,
which only renders the single-page app once its scripts have run: `--virtual-time-budget`
lets the page's timers and requests finish before the picture is taken.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ldm.errors import LdmError
from ldm.tracking.runs import _client_and_experiment, remote_ui, tracking_uri

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--no-proxy-server",  # the page is on this machine
    "--window-size=1600,1000",
)
# The name Chromium reaches a local UI by. The UI opens its assistant panel over a third of the
# page when the address is localhost or 127.0.0.1; under another name it keeps to the content.
SCREENSHOT_HOST = "ldm-ui"


def server_env(root: Path) -> dict[str, str]:
    """The environment of a server process: the project's store, this interpreter's tools."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking_uri(root)
    # The UI would otherwise start eight job workers (~270 MB each) for GenAI features it
    # does not need here (mlflow/server/__init__.py reads this variable).
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # `mlflow models serve` starts `uvicorn` by name: find the one next to this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def ui_command(root: Path, port: int) -> list[str]:
    artifacts = (root.resolve() / "mlartifacts").as_uri()
    return [
        *(sys.executable, "-m", "mlflow", "ui"),
        *("--backend-store-uri", tracking_uri(root), "--artifacts-destination", artifacts),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]


def serve_command(model_uri: str, port: int) -> list[str]:
    return [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri),
        *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
    ]


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A server in its own process group (see `stop`), its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a server started by `start` and the workers it spawned."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:  # the group is gone already
        process.wait()


def check_port_free(port: int) -> None:
    """Fail before starting a server whose port another one holds: polling it would reach the
    other server."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise LdmError(
                f"port {port} on 127.0.0.1 is in use; pick another with --port"
            ) from None


def wait_until_up(url: str, process: subprocess.Popen | None, timeout: float) -> None:
    """Poll `url` until it answers 200; fail early when the server process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LdmError(
                f"the server exited with code {process.returncode} before {url} answered"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise LdmError(f"{url} did not answer within {timeout:.0f} s")


@dataclass(frozen=True)
class UiPages:
    runs: str  # the experiment's runs table
    trial: str | None  # the newest trial's parent run
    model: str  # the registered model's page: versions, aliases, promotion log


def ui_pages(root: Path, experiment: str, model_name: str, base: str) -> UiPages:
    """Addresses of the pages worth opening. The runs table is named explicitly: MLflow 3.17
    otherwise opens on a GenAI overview."""
    client, experiment_id = _client_and_experiment(root, experiment)
    trials = client.search_runs(
        [experiment_id], "tags.`ldm.kind` = 'trial'", max_results=1, order_by=["start_time DESC"]
    )
    app = f"{base.rstrip('/')}/#"
    trial = f"{app}/experiments/{experiment_id}/runs/{trials[0].info.run_id}" if trials else None
    return UiPages(
        runs=f"{app}/experiments/{experiment_id}/runs",
        trial=trial,
        model=f"{app}/models/{quote(model_name, safe='')}",
    )


def find_chromium() -> Path:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise LdmError(
        "screenshots need Chromium, which was not found (looked for "
        f"{', '.join(CHROMIUM_NAMES)} on PATH); install it, e.g. `apt-get install chromium`"
    )


def screenshot(
    url: str, target: Path, budget_ms: int, host_rules: str | None = None, timeout: float = 120.0
) -> None:
    """A PNG of `url` after `budget_ms` of the page's virtual time, via headless Chromium;
    `host_rules` maps names to addresses (`MAP name 127.0.0.1`)."""
    chromium = find_chromium()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.png")  # never a half-written picture
    with tempfile.TemporaryDirectory(prefix="ldm-chromium-") as profile:
        command = [
            str(chromium),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={tmp}",
            *([f"--host-resolver-rules={host_rules}"] if host_rules else []),
            url,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            tmp.unlink(missing_ok=True)
            raise LdmError(f"Chromium did not finish {url} within {timeout:.0f} s") from None
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise LdmError(f"Chromium could not capture {url}:\n{done.stderr[-2000:]}")
    tmp.replace(target)


def take_screenshots(
    root: Path, experiment: str, model_name: str, port: int, folder: Path, budget_ms: int
) -> list[Path]:
    """Start the UI, capture the runs table, the newest trial's run page and the registered
    model's page (versions, aliases, promotion log), stop the UI; the pictures written."""
    find_chromium()  # before starting anything
    folder.mkdir(parents=True, exist_ok=True)
    base, process, rules = remote_ui(root), None, None
    if base is None:
        local = f"127.0.0.1:{port}"
        hosts = f"{SCREENSHOT_HOST}:{port},{local},localhost:{port}"
        base, rules = f"http://{SCREENSHOT_HOST}:{port}", f"MAP {SCREENSHOT_HOST} 127.0.0.1"
        command = [
            *ui_command(root, port),
            *("--allowed-hosts", hosts, "--cors-allowed-origins", base),
        ]
        check_port_free(port)
        process = start(command, server_env(root), folder / "mlflow-ui.log")
        health = f"http://{local}/health"
    else:
        health = f"{base.rstrip('/')}/health"
    try:
        try:
            wait_until_up(health, process, timeout=120)
        except LdmError as err:
            hint = f"; the server's output is in {folder / 'mlflow-ui.log'}" if process else ""
            raise LdmError(f"{err}{hint}") from None
        pages = ui_pages(root, experiment, model_name, base)
        shots = {"runs.png": pages.runs, "model.png": pages.model}
        if pages.trial is not None:
            shots["trial.png"] = pages.trial
        for name, url in shots.items():
            screenshot(url, folder / name, budget_ms, rules)
        return [folder / name for name in shots]
    finally:
        if process is not None:
            stop(process)
