"""CSV/TSV in open_clip's convention: an image path column (``filepath``) and a caption column (``title``).

Options: ``img_key``, ``caption_key``, ``sep``, ``image_id_key`` (groups several caption rows of one image;
default: the image path), ``root`` (folder that relative paths are resolved against; default: the CSV's folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DataError


def read_csv_table(spec: Mapping[str, Any], default_sep: str = ",") -> pd.DataFrame:
    path = Path(spec["path"])
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    sep = spec.get("sep", default_sep)
    img_key = spec.get("img_key", "filepath")
    cap_key = spec.get("caption_key", "title")
    id_key = spec.get("image_id_key")
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot read CSV ({type(exc).__name__})") from None
    for key in (img_key, cap_key) + ((id_key,) if id_key else ()):
        if key not in frame.columns:
            raise DataError(f"{path}: no column {key!r} (columns: {', '.join(frame.columns)}; set img_key/caption_key/image_id_key)")
    root = Path(spec.get("root") or path.parent)
    images = [p if Path(p).is_absolute() else str(root / p) for p in frame[img_key]]
    out = frame.drop(columns=[c for c in ("image", "shard", "caption") if c in frame.columns and c not in (img_key, cap_key)])
    out = out.assign(image=images, caption=frame[cap_key].values, shard="")
    out["image_id"] = frame[id_key].values if id_key else frame[img_key].values
    return out
