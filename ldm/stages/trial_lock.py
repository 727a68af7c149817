"""One trial at a time per project: `ldm run` holds a lock, and a second one refuses at once.

Two trials in one project would write the same outputs, `dvc.lock` and checkpoints under each
other. The lock is an OS file lock (flock), so it is released when its holder exits in any
way, even killed; the holder's details sit beside it so the refusal can name it.

flock, not the filelock package: the lock's descriptor is handed to the flow process that
`ldm run` starts (`pass_fds`), so the lock lasts until both have exited, and filelock does not
expose its descriptor.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ldm.errors import LdmError


class TrialRunning(LdmError):
    """Another trial holds this project."""


def state_folder(root: Path) -> Path:
    """`.ldm/` in the project: the lock, the last trial's record (not tracked by git or DVC)."""
    folder = root / ".ldm"
    folder.mkdir(exist_ok=True)
    return folder


@contextmanager
def trial_lock(root: Path, command: str) -> Iterator[int]:
    """Hold the project's trial lock within; yields its descriptor (a child given it holds the
    lock too, until it exits)."""
    folder = state_folder(root)
    holder = folder / "trial-holder.json"
    fd = os.open(folder / "trial.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TrialRunning(f"another trial is running in {root}: {_describe(holder)}") from None
    try:
        holder.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "user": getpass.getuser(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": command,
                }
            )
        )
        yield fd
    finally:
        holder.unlink(missing_ok=True)
        os.close(fd)  # released, unless a child that was given it still runs


def _describe(holder: Path) -> str:
    try:
        info = json.loads(holder.read_text())
    except (OSError, ValueError):
        return "wait for it to finish"
    return (
        f"`{info['command']}` (pid {info['pid']} on {info['host']}, by {info['user']}, "
        f"started {info['started']}). Wait for it to finish, or stop it with `kill {info['pid']}`"
    )
