"""Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``) used for COCO/Flickr30K retrieval.

``images`` [{filename, filepath?, split, imgid?, sentences: [{raw}]}]; image path = image_root/filepath/filename.
The ``split`` column (train/restval/val/test) is kept for ``where`` filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DataError
from .coco import _read_json


def read_karpathy(spec: Mapping[str, Any]) -> pd.DataFrame:
    path = Path(spec["path"])
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a Karpathy split file (needs an 'images' list)")
    root = Path(spec.get("image_root") or path.parent)
    rows = []
    for k, img in enumerate(data["images"]):
        try:
            rel = Path(img.get("filepath", "")) / img["filename"]
            key = str(img.get("imgid", img.get("cocoid", img["filename"])))
            for sent in img["sentences"]:
                rows.append((key, str(root / rel), sent["raw"].strip(), img.get("split", ""), img["filename"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: image entry {k} is malformed (missing {exc})") from None
    return pd.DataFrame(rows, columns=["image_id", "image", "caption", "split", "filename"])
