"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero.

Also how a command is stopped: `Interrupted`, raised by `stop_on_signals` on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class LdmError(Exception):
    """A problem with the user's input or setup; the message says what is wrong and what to do."""


class ConfigError(ValueError):
    """A params file or override that does not fit the schema; the message names the key."""


class DataError(LdmError):
    """The data folder cannot be used as it is (missing, empty, failed the quality suite)."""


class WeightsMissing(LdmError):
    """A pretrained network's local weight file is not set, not there, or not the expected one.

    Nothing is downloaded at run time: the message names the file, the setting that points at
    it, and the setting that selects a packaged network instead.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP reached the command: it stops, keeping what it finished.

    A KeyboardInterrupt, so that everything that cleans up after Ctrl-C (an MLflow run marked
    KILLED, a temporary checkpoint folder removed) does the same for a cancelled job.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.said = False  # True once a line told the user where the run stopped

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a command that a signal stopped."""
        return 128 + self.signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How the line of a stage that a signal stopped begins (ldm/cli/stages.py), for those that
# relay its output (flows/stage_run.py).
INTERRUPTED_DURING = "interrupted during"


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: the first of STOP_SIGNALS raises Interrupted; a second, even after the block,
    ends the process at once.

    Python raises KeyboardInterrupt on SIGINT alone and dies silently on SIGTERM, so a cancelled
    job would skip every cleanup; the second signal is the user's "stop now" during that cleanup.
    """
    caught: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if caught:
            os._exit(128 + caught[0])
        caught.append(signum)
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; it receives the signals anyway
        return
    before = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        if not caught:  # once stopping, the process stays "stop now" on a second signal
            for signum, previous in before.items():
                signal.signal(signum, previous)
