"""Apply thresholds to the summary of one comparison (reference -> candidate)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np
import pandas as pd

from .thresholds import Threshold

STATUSES = ("pass", "warn", "fail")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one threshold on one probe set and modality."""

    check: Threshold
    probe: str
    modality: str
    value: float | None
    status: str  # pass | warn | fail
    reason: str

    @property
    def where(self) -> str:
        return f"{self.probe}/{self.modality}"

    def line(self) -> str:
        """One terminal line: status, metric, where, value, bounds, reason."""
        value = "n/a" if self.value is None or not math.isfinite(self.value) else f"{self.value:.4g}"
        label = self.check.metric if not self.check.name else f"{self.check.name} ({self.check.metric})"
        text = f"{self.status.upper():<4}  {label} [{self.where}] = {value}  ({self.check.bounds_text()}, {self.check.severity})"
        return text if self.status == "pass" else f"{text}: {self.reason}"


def _modalities(check: Threshold, present: set[str]) -> list[str]:
    if check.modality != "*":
        return [check.modality]
    return [m for m in ("image", "text", "cross") if m in present]


def evaluate(summary: pd.DataFrame, checks: list[Threshold]) -> list[CheckResult]:
    """Every (check, probe, modality) combination the summary holds.

    ``summary`` is tidy [probe, modality, metric, value] for ONE comparison. A check that matches no value
    (no such probe set or modality, or a NaN) is not silently passed: it takes its own severity.
    """
    out: list[CheckResult] = []
    for check in checks:
        rows = summary[summary["metric"] == check.metric]
        rows = rows[np.array([fnmatchcase(str(p), check.probe) for p in rows["probe"]], dtype=bool)]  # a list would pick columns when empty
        mods = _modalities(check, set(rows["modality"]))
        matched = False
        for mod in mods:
            sel = rows[rows["modality"] == mod]
            for probe, value in zip(sel["probe"].astype(str), sel["value"]):
                matched = True
                out.append(_judge(check, probe, mod, value))
        if not matched:
            where = f"probe {check.probe!r}, modality {check.modality!r}"
            out.append(CheckResult(check, check.probe, check.modality, None, check.severity, f"no value for {check.metric} matches {where}"))
    return out


def unavailable(checks: list[Threshold], present: set[str]) -> list[tuple[int, Threshold]]:
    """The checks (1-based number, check) that can match no modality in ``present`` (e.g. cross-modal checks on image arrays).

    Such a check cannot be evaluated on these inputs at all, which is a mismatch between the thresholds and the
    inputs (bad input), not drift.
    """
    from ..metrics.registry import METRICS

    out = []
    for i, check in enumerate(checks, start=1):
        info = METRICS.get(check.metric)
        wanted = set(info.modalities if info is not None else ("image", "text", "cross"))
        if check.modality != "*":
            wanted &= {check.modality}
        if not wanted & present:
            out.append((i, check))
    return out


def _judge(check: Threshold, probe: str, modality: str, value) -> CheckResult:
    v = None if value is None or pd.isna(value) else float(value)
    if v is None:
        return CheckResult(check, probe, modality, None, check.severity, "value is missing (NaN)")
    if check.min is not None and v < check.min:
        return CheckResult(check, probe, modality, v, check.severity, f"below min {check.min:g}")
    if check.max is not None and v > check.max:
        return CheckResult(check, probe, modality, v, check.severity, f"above max {check.max:g}")
    return CheckResult(check, probe, modality, v, "pass", "within bounds")


def exit_code(results: list[CheckResult]) -> int:
    """0 when nothing failed (warnings allowed), 1 when any check failed."""
    return 1 if any(r.status == "fail" for r in results) else 0


def counts(results: list[CheckResult]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in STATUSES}
