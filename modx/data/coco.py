"""COCO captions JSON (``captions_train2017.json``): ``images`` [{id, file_name}] and ``annotations`` [{image_id, caption}].

Option ``image_root``: the folder holding the image files (default: the JSON's folder).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DataError


def read_coco(spec: Mapping[str, Any]) -> pd.DataFrame:
    path = Path(spec["path"])
    data = _read_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    root = Path(spec.get("image_root") or path.parent)
    try:
        files = {str(img["id"]): img["file_name"] for img in data["images"]}
        rows = [(str(a["image_id"]), a["caption"].strip()) for a in data["annotations"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: malformed COCO entry (missing {exc})") from None
    unknown = [i for i, _ in rows if i not in files]
    if unknown:
        raise DataError(f"{path}: annotation refers to unknown image id {unknown[0]}")
    order = {i: k for k, i in enumerate(files)}
    rows.sort(key=lambda r: order[r[0]])
    return pd.DataFrame(
        {
            "image_id": [i for i, _ in rows],
            "image": [str(root / files[i]) for i, _ in rows],
            "caption": [c for _, c in rows],
            "file_name": [files[i] for i, _ in rows],
        }
    )


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid JSON ({str(exc).splitlines()[0]})") from None
