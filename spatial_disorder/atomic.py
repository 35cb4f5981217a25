"""Crash-safe file writes, the one helper of both packages: write to a temporary name in the same folder, fsync, rename.

Used by the run writer, the gate and report outputs, modx checkpoints and the benchmark builder. It imports
neither torch nor anything of ``modx``, so every layer may use it. Files get the mode an ordinary ``open``
gives them (0666 minus the umask).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

_CHUNK = 1 << 22


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(path: Path) -> tuple[int, str]:
    """Create a new hidden temporary file beside ``path``, with the mode an ordinary file gets (0666 minus the umask).

    ``tempfile.mkstemp`` would make it 0600, and the rename would carry that mode to ``path``: a teammate or a CI
    artifact step could not read the run.
    """
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def write_synced(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` and fsync it, without a rename: for files inside a folder that is itself
    built under a temporary name and renamed into place when complete."""
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def fsync_file(path: Path) -> None:
    """Flush a file another library wrote (pandas, pyarrow) to the disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_npy_synced(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy, fsync it, and return the sha256 of the bytes on disk."""
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return sha256_file(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
