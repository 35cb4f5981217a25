"""A lock file per run folder, so that two processes of an experiment never train the same run at once."""

from __future__ import annotations

import os
import time
from pathlib import Path


def take_lock(out: Path, label: str, wait: bool = True, say=print) -> Path | None:
    """Take ``<run>.lock`` (another process may train the same run); wait while it is held.

    The lock file holds the owner's process id; a lock whose process is gone is stale and taken over.
    Returns the lock path, or None when the lock is held elsewhere and ``wait`` is false.
    """
    lock = out.parent / f"{out.name}.lock"
    out.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                pass
            if not wait:
                return None
            if not waited:
                say(f"{label}: another process is training it, waiting")
                waited = True
            time.sleep(10)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return lock
