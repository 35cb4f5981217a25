"""Atomic output folders: everything is written into a hidden sibling folder, fsynced, then swapped into place."""

from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path

from ..atomic import fsync_dir, write_synced
from ..errors import InputError

# A folder we may replace holds one of these (so a typo in --out never deletes someone's data).
MARKERS = ("index.html", "metrics.json", "compare.json")


def report_files(html: str, tables: dict, rendered: dict, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The files of a report folder: the page, every table as CSV, every rendered figure format, extras."""
    out = {"index.html": html.encode("utf-8"), **(extra or {})}
    for name, frame in tables.items():
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        out[f"tables/{name}.csv"] = buf.getvalue().encode("utf-8")
    for key, formats in rendered.items():
        for fmt, data in formats.items():
            out[f"figures/{key}.{fmt}"] = data
    return out


def write_folder(out: str | os.PathLike, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative path -> bytes) as the folder ``out``, replacing a previous report there.

    The new folder is complete and fsynced before it appears under its name; a crash leaves either the old
    report or the new one (plus, at worst, a hidden ``.name.tmp-*`` folder). Refuses to replace a non-empty
    folder that does not look like a report.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{out}: output path exists and is not a folder")
        if any(out.iterdir()) and not any((out / m).is_file() for m in MARKERS):
            raise InputError(f"{out}: folder is not empty and holds no report; refusing to replace it (choose another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        for rel, data in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            write_synced(target, data)
        for folder in {(tmp / rel).parent for rel in files} | {tmp}:
            fsync_dir(folder)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
