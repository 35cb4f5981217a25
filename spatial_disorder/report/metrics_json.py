"""``metrics.json``: the machine-readable result of a report (schema "spatial-disorder-metrics", version 2).

Documented in docs/report.md; the JSON Schema ships next to this module (``metrics.schema.json``).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from .._version import __version__
from ..analysis import JSON_TABLES
from ..jsonutil import clean
from ..metrics.registry import METRICS

SCHEMA_NAME = "spatial-disorder-metrics"
SCHEMA_VERSION = 2  # 2: cross_stage, trajectories and spectra tables; metric flags (section, family, headline, compare, gate, calibrate)


def metrics_document(analysis, run_info: dict | None = None) -> dict:
    """The JSON document: run description, settings, every run-level table of the analysis, metric definitions."""
    names = list(dict.fromkeys(analysis.summary["metric"])) if len(analysis.summary) else []
    data = analysis.to_dict()
    return {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "tool": {"name": "spatial-disorder", "version": __version__},
        "run": clean(run_info or {}),
        "settings": data["meta"],
        **{name: data[name] for name in JSON_TABLES},
        "metrics": {n: clean(metric_entry(n)) for n in names},
    }


def metric_entry(name: str) -> dict:
    """A metric's definition and flags as written to metrics.json."""
    info = METRICS.get(name)
    if info is None:
        return {"unit": "", "worse_when": "", "description": "(not in the registry)", "formula": ""}
    keys = ("unit", "kind", "worse_when", "better", "description", "formula", "section", "family", "headline", "compare", "gate",
            "calibrate")
    return {k: getattr(info, k) for k in keys}


def dumps(doc: dict) -> bytes:
    """The document as indented JSON, except that a table (a list of row objects) has one row per line: as readable
    and diffable, a third of the size, and written by the C encoder (``json`` indents in pure Python)."""
    row = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(", ", ": "))
    parts = []
    for key, value in doc.items():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            text = "[\n" + ",\n".join("    " + row.encode(r) for r in value) + "\n  ]"
        else:
            text = json.dumps(value, indent=2, allow_nan=False, ensure_ascii=False).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key, ensure_ascii=False)}: {text}")
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode("utf-8")


def json_schema() -> dict:
    """The JSON Schema of metrics.json."""
    return json.loads((Path(__file__).with_name("metrics.schema.json")).read_text(encoding="utf-8"))
