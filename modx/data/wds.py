"""webdataset tar shards read with the standard ``tarfile`` module: ``key.jpg|png|webp`` + ``key.txt`` or ``key.json``.

``path``: one tar, a brace range (``shards-{000..009}.tar``) or a list. For ``key.json`` the caption is
``caption_key`` (default ``caption``); other scalar JSON fields become columns usable in filters.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DataError

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")


def expand_braces(pattern: str) -> list[str]:
    """Expand one ``{000..009}`` numeric range (webdataset shard notation)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo)
    return [
        p
        for i in range(int(lo), int(hi) + 1)
        for p in expand_braces(pattern[: match.start()] + str(i).zfill(width) + pattern[match.end() :])
    ]


def read_wds(spec: Mapping[str, Any]) -> pd.DataFrame:
    paths = spec["path"] if isinstance(spec["path"], list) else expand_braces(str(spec["path"]))
    cap_key = spec.get("caption_key", "caption")
    rows = []
    for shard in paths:
        if not Path(shard).is_file():
            raise DataError(f"{shard}: tar shard not found")
        try:
            with tarfile.open(shard) as tar:
                groups: dict[str, dict] = {}
                for member in tar.getmembers():
                    if not member.isfile():
                        continue
                    name = member.name
                    base = name.rsplit("/", 1)[-1]
                    if "." not in base:
                        continue
                    key = name[: len(name) - len(base)] + base.split(".", 1)[0]
                    ext = "." + base.split(".", 1)[1].lower()
                    entry = groups.setdefault(key, {})
                    if ext in IMAGE_EXT:
                        entry["image"] = name
                    elif ext in (".txt", ".json"):
                        entry[ext] = tar.extractfile(member).read().decode("utf-8")
        except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{shard}: cannot read tar shard ({type(exc).__name__})") from None
        for key, entry in groups.items():
            if "image" not in entry:
                continue
            extra: dict = {}
            if ".json" in entry:
                try:
                    meta = json.loads(entry[".json"])
                except json.JSONDecodeError:
                    raise DataError(f"{shard}: {key}.json is not valid JSON") from None
                extra = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) and k != cap_key}
                caption = entry.get(".txt") or meta.get(cap_key)
            else:
                caption = entry.get(".txt")
            if caption is None:
                raise DataError(f"{shard}: sample {key!r} has an image but no caption (.txt or .json:{cap_key})")
            caps = caption if isinstance(caption, list) else [caption]
            for cap in caps:
                rows.append({"image_id": f"{Path(shard).name}/{key}", "image": entry["image"], "shard": shard, "caption": str(cap).strip(), **extra})
    if not rows:
        raise DataError(f"{paths[0] if paths else spec['path']}: no image+caption samples in the shard(s)")
    return pd.DataFrame(rows)
