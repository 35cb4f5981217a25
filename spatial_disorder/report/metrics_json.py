"""``metrics.json``: the machine-readable result of a report (schema "spatial-disorder-metrics", version 1).

Documented in docs/report.md; the JSON Schema ships next to this module (``metrics.schema.json``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .._version import __version__
from .tables import definitions

SCHEMA_NAME = "spatial-disorder-metrics"
SCHEMA_VERSION = 1


def _clean(value):
    """Plain JSON values: numpy scalars unwrapped, NaN/inf as null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _records(frame: pd.DataFrame | None) -> list[dict]:
    if frame is None or not len(frame):
        return []
    return [_clean(r) for r in frame.to_dict(orient="records")]


def metrics_document(analysis, run_info: dict | None = None) -> dict:
    """The JSON document: run description, settings, tidy summary and retrieval rows, metric definitions."""
    summary = getattr(analysis, "summary", None)
    names = list(dict.fromkeys(summary["metric"])) if summary is not None and len(summary) else []
    defs = definitions(names)
    cont = getattr(analysis, "continual", None)
    if isinstance(cont, pd.DataFrame):
        continual = _records(cont)
    elif isinstance(cont, dict):
        continual = {k: _records(v) if isinstance(v, pd.DataFrame) else _clean(v) for k, v in cont.items()}
    else:
        continual = []
    return {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "tool": {"name": "spatial-disorder", "version": __version__},
        "run": _clean(run_info or {}),
        "settings": _clean(dict(getattr(analysis, "meta", {}) or {})),
        "summary": _records(summary),
        "retrieval": _records(getattr(analysis, "retrieval", None)),
        "continual": continual,
        "metrics": {r["metric"]: _clean({k: r[k] for k in ("unit", "worse_when", "description", "formula")}) for r in defs.to_dict("records")},
    }


def dumps(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


def json_schema() -> dict:
    """The JSON Schema of metrics.json (version 1)."""
    return json.loads((Path(__file__).with_name("metrics.schema.json")).read_text(encoding="utf-8"))
