"""The one JSON cleaner: numpy scalars and arrays unwrapped, NaN and inf as null, paths and other objects as text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def clean(value, strict: bool = False):
    """A plain JSON value (dicts, lists, str, int, float, bool, None) for ``json.dumps(..., allow_nan=False)``.

    ``strict``: refuse NaN and inf (``ValueError``) and objects with no JSON form (``TypeError``) instead of writing
    null and text, for values that must read back as they were written (a run's metadata)."""
    if isinstance(value, dict):
        return {str(k): clean(v, strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, strict) for v in value]
    if isinstance(value, np.ndarray):
        return [clean(v, strict) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if strict:
            raise ValueError(f"{value} is not a finite number (JSON has no NaN or infinity)")
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if strict:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return str(value)


def records(frame: pd.DataFrame | None) -> list[dict]:
    """A table as a list of cleaned row dicts ([] for None or an empty table), as ``clean`` makes each value.

    Built column by column: numeric and boolean columns are unwrapped in one pass each (NaN and inf as None), only
    other columns go through ``clean`` value by value (a report's spectra table has tens of thousands of rows)."""
    if frame is None or not len(frame):
        return []
    names = [str(c) for c in frame.columns]
    return [dict(zip(names, row)) for row in zip(*(_column_values(frame.iloc[:, i]) for i in range(frame.shape[1])))]


def _column_values(column: pd.Series) -> list:
    dtype = column.dtype
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        values = column.to_numpy()
        out = values.tolist()
        for i in np.flatnonzero(~np.isfinite(values)).tolist():
            out[i] = None
        return out
    if isinstance(dtype, np.dtype) and dtype.kind in "iub":
        return column.to_numpy().tolist()
    return [None if v is pd.NA else clean(v) for v in column.astype(object).tolist()]  # NA as to_dict gives it
