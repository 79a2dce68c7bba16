"""One training at a time in a run folder: `work_dir/run.lock` holds the owner's host and process id.

A second run in the same folder stops with one line naming the first; a lock left by a process
that no longer exists (kill -9, a crash, a reboot) is taken over, with a note.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path


class RunFolderBusy(ValueError):
    """Another live process trains in this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Context manager holding `work_dir/run.lock` (taken with O_EXCL, so two starts cannot both win)."""

    def __init__(self, work_dir: Path):
        self.path = Path(work_dir) / "run.lock"
        self.note: str | None = None  # set when a stale lock was taken over

    def __enter__(self) -> RunLock:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
            return self
        raise RunFolderBusy(f"run folder {self.path.parent} is being taken by another run at this moment; try again")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            host, pid = owner["host"], int(owner["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            host, pid = None, None  # unreadable (a kill while it was written): stale
        if host == socket.gethostname() and pid is not None and _alive(pid):
            raise RunFolderBusy(f"run folder {self.path.parent} is in use by process {pid} on {host} "
                                f"({self.path}); wait for it, stop it, or pick another --work-dir")
        if host not in (None, socket.gethostname()):
            raise RunFolderBusy(f"run folder {self.path.parent} is locked by process {pid} on host {host}, "
                                f"which cannot be checked from here; if that run is over, delete {self.path}")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.note = f"note: took over the lock of process {pid}, which no longer runs ({self.path})"

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
