"""The gate's thresholds file (TOML): which metric, which bounds, for which probe sets and modalities, how severe.

    [[check]]
    metric = "knn_overlap_mean"   # any name in the metric registry
    min = 0.6                     # and/or max = ...
    probe = "*"                   # glob over probe-set names (default "*")
    modality = "image"            # image | text | cross | "*" (default "*": every modality the metric has)
    severity = "fail"             # fail (default) | warn
    name = "image neighbours kept"  # optional label
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

KEYS = ("metric", "min", "max", "probe", "modality", "severity", "name")
SEVERITIES = ("fail", "warn")
MODALITIES = ("image", "text", "cross", "*")


@dataclass(frozen=True)
class Threshold:
    """One ``[[check]]`` entry: bounds on a metric for matching probe sets and modalities."""

    metric: str
    min: float | None = None
    max: float | None = None
    probe: str = "*"
    modality: str = "*"
    severity: str = "fail"
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.metric

    def bounds_text(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"min {self.min:g}")
        if self.max is not None:
            parts.append(f"max {self.max:g}")
        return ", ".join(parts)


def _toml_module():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise InputError("reading a thresholds file needs Python 3.11+ or the 'tomli' package") from None
    return tomllib


def valid_metrics() -> dict:
    """Metrics a thresholds file may name: those registered with the ``gate`` flag."""
    from ..metrics.registry import METRICS

    return {name: info for name, info in METRICS.items() if info.gate}


def parse_thresholds(text: str, source: str = "<thresholds>") -> list[Threshold]:
    """Parse and validate thresholds TOML; every problem is one InputError line naming ``source``."""
    toml = _toml_module()
    try:
        doc = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise InputError(f"{source}: not valid TOML ({exc})") from None
    extra = [k for k in doc if k != "check"]
    if extra:
        raise InputError(f"{source}: unknown top-level key(s) {extra}; the file holds [[check]] tables only")
    checks = doc.get("check")
    if not isinstance(checks, list) or not checks:
        raise InputError(f"{source}: no [[check]] tables found")
    registry = valid_metrics()
    out = []
    for i, entry in enumerate(checks, start=1):
        where = f"{source}: check #{i}"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: must be a table")
        unknown = [k for k in entry if k not in KEYS]
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown}; allowed keys are {list(KEYS)}")
        metric = entry.get("metric")
        if not isinstance(metric, str) or not metric:
            raise InputError(f"{where}: 'metric' is required (a metric name)")
        if metric not in registry:
            raise InputError(f"{where}: unknown metric {metric!r}; valid metrics are: {', '.join(sorted(registry))}")
        bounds = {}
        for key in ("min", "max"):
            v = entry.get(key)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise InputError(f"{where}: '{key}' must be a finite number, not {v!r}")
                bounds[key] = float(v)
        if not bounds:
            raise InputError(f"{where}: give 'min' and/or 'max' for {metric!r}")
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
            raise InputError(f"{where}: min {bounds['min']:g} is greater than max {bounds['max']:g}")
        severity = entry.get("severity", "fail")
        if severity not in SEVERITIES:
            raise InputError(f"{where}: severity must be one of {list(SEVERITIES)}, not {severity!r}")
        modality = entry.get("modality", "*")
        if modality not in MODALITIES:
            raise InputError(f"{where}: modality must be one of {list(MODALITIES)}, not {modality!r}")
        allowed = registry[metric].modalities
        if modality != "*" and modality not in allowed:
            raise InputError(f"{where}: metric {metric!r} exists for modality {' / '.join(allowed)}, not {modality!r}")
        probe = entry.get("probe", "*")
        name = entry.get("name", "")
        if not isinstance(probe, str) or not probe or not isinstance(name, str):
            raise InputError(f"{where}: 'probe' and 'name' must be strings")
        out.append(Threshold(metric, bounds.get("min"), bounds.get("max"), probe, modality, severity, name))
    return out


def load_thresholds(path: str | os.PathLike) -> list[Threshold]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: thresholds file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: thresholds file is not UTF-8 text") from None
    return parse_thresholds(text, str(path))


def _toml_value(v) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(float(v)) if isinstance(v, float) else str(v)


def to_toml(checks: list[Threshold], header: str = "") -> str:
    """Thresholds as a TOML file that ``parse_thresholds`` reads back unchanged."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for c in checks:
        lines.append("")
        lines.append("[[check]]")
        if c.name:
            lines.append(f"name = {_toml_value(c.name)}")
        lines.append(f"metric = {_toml_value(c.metric)}")
        if c.min is not None:
            lines.append(f"min = {_toml_value(float(c.min))}")
        if c.max is not None:
            lines.append(f"max = {_toml_value(float(c.max))}")
        lines.append(f"probe = {_toml_value(c.probe)}")
        lines.append(f"modality = {_toml_value(c.modality)}")
        lines.append(f"severity = {_toml_value(c.severity)}")
    return "\n".join(lines).lstrip("\n") + "\n"
