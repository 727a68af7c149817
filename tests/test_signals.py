"""How a command turns a stop signal into a clean stop: the pieces, in one process each."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from ldm.errors import Interrupted, stop_on_signals
from ldm.progress import progress_bar, reached

# A child that waits under stop_on_signals, prints how it was stopped, and sleeps in cleanup
# (as marking an MLflow run does), so a second signal lands there.
CHILD = """
import sys, time
from ldm.errors import Interrupted, stop_on_signals
try:
    with stop_on_signals():
        print("ready", flush=True)
        time.sleep(60)
except Interrupted as err:
    print("stopped", err.signum, flush=True)
    time.sleep(float(sys.argv[1]))
    sys.exit(err.exit_code)
"""


def child(cleanup_s: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cleanup_s)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_raises_interrupted_and_the_exit_code_names_it(signum, code) -> None:
    proc = child(cleanup_s=0)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == code
    assert proc.stdout.read().split() == ["stopped", str(int(signum))]


def test_a_second_signal_during_cleanup_ends_the_process_at_once() -> None:
    proc = child(cleanup_s=60)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().startswith("stopped")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130 and time.monotonic() - started < 10


def test_handlers_are_restored_when_no_signal_came() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    # A KeyboardInterrupt: whatever marks an MLflow run KILLED on Ctrl-C does so on SIGTERM.
    assert isinstance(Interrupted(signal.SIGHUP), KeyboardInterrupt)
    assert Interrupted(signal.SIGHUP).exit_code == 129


def test_progress_remembers_how_far_each_loop_got() -> None:
    assert reached("a loop that never ran") is None
    with progress_bar("train_x@plain", 10) as advance:
        advance(4, already_done=True)  # resumed at step 4
        advance(3)
    assert reached("train_x@plain") == 7
