"""The one JSON cleaner: numpy scalars and arrays unwrapped, NaN and inf as null, paths and other objects as text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def clean(value):
    """A plain JSON value (dicts, lists, str, int, float, bool, None) for ``json.dumps(..., allow_nan=False)``."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [clean(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def records(frame: pd.DataFrame | None) -> list[dict]:
    """A table as a list of cleaned row dicts ([] for None or an empty table)."""
    if frame is None or not len(frame):
        return []
    return [clean(r) for r in frame.to_dict(orient="records")]
