"""Tables of a report: the CSV files, the headline table printed on the terminal, and the metric definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Metrics in the terminal summary, in this order (those absent from the analysis are skipped).
HEADLINE = (
    "rotation_mean_deg",
    "procrustes_angle_deg",
    "topology_change_mean_deg",
    "knn_overlap_mean",
    "paired_angle_change_mean_deg",
    "rotation_mismatch_mean_deg",
    "intermodal_rotation_deg",
    "i2t_R@1_delta",
    "t2i_R@1_delta",
)


def metric_registry() -> dict:
    """The metric registry (name -> MetricInfo), or {} when the analyzers are not installed."""
    try:
        from ..metrics.registry import METRICS
    except ImportError:
        return {}
    return dict(METRICS)


def metric_field(info, field: str, default=""):
    """A field of a registry entry, whether it is a dataclass or a plain dict."""
    if info is None:
        return default
    if isinstance(info, dict):
        return info.get(field, default)
    return getattr(info, field, default)


def definitions(names) -> pd.DataFrame:
    """Definitions of the given metrics from the registry: [metric, unit, worse_when, description, formula]."""
    reg = metric_registry()
    rows = []
    for name in names:
        info = reg.get(name)
        rows.append(
            {
                "metric": name,
                "unit": metric_field(info, "unit"),
                "worse_when": metric_field(info, "worse_when"),
                "description": metric_field(info, "description", "(not in the registry)"),
                "formula": metric_field(info, "formula"),
            }
        )
    return pd.DataFrame(rows, columns=["metric", "unit", "worse_when", "description", "formula"])


def pair_label(a, b) -> str:
    return f"{a} → {b}"


def wide_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Summary pivoted to one row per (probe, modality, metric) and one column per stage pair."""
    if summary is None or not len(summary):
        return pd.DataFrame()
    s = summary.copy()
    s["pair"] = [pair_label(a, b) for a, b in zip(s["stage_a"], s["stage_b"])]
    order = list(dict.fromkeys(s["pair"]))
    wide = s.pivot_table(index=["probe", "modality", "metric"], columns="pair", values="value", aggfunc="first", sort=False)
    return wide.reindex(columns=order).reset_index()


def headline(analysis, ref: str, last: str) -> pd.DataFrame:
    """The few numbers a reader wants first: each headline metric for ``ref`` -> ``last`` per probe and modality."""
    s = analysis.summary
    if s is None or not len(s):
        return pd.DataFrame()
    sel = s[(s["stage_a"].astype(str) == str(ref)) & (s["stage_b"].astype(str) == str(last)) & s["metric"].isin(HEADLINE)]
    if not len(sel):
        return pd.DataFrame()
    table = sel.pivot_table(index=["probe", "metric"], columns="modality", values="value", aggfunc="first")
    order = {m: i for i, m in enumerate(HEADLINE)}
    table = table.reset_index()
    table["_o"] = table["metric"].map(order)
    table = table.sort_values(["probe", "_o"]).drop(columns="_o")
    cols = ["probe", "metric"] + [m for m in ("image", "text", "cross") if m in table.columns]
    return table[cols].reset_index(drop=True)


def format_headline(table: pd.DataFrame, ref: str, last: str) -> str:
    """Plain-text rendering of ``headline`` for the terminal."""
    if not len(table):
        return "(no metrics computed)"
    lines = [f"stage {ref} -> {last}"]
    cols = [c for c in ("image", "text", "cross") if c in table.columns]
    lines.append(f"{'probe':<14} {'metric':<30}" + "".join(f"{c:>10}" for c in cols))
    for _, row in table.iterrows():
        vals = "".join(f"{_num(row[c]):>10}" for c in cols)
        lines.append(f"{str(row['probe'])[:14]:<14} {row['metric']:<30}{vals}")
    return "\n".join(lines)


def _num(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return str(v)


def csv_tables(analysis) -> dict[str, pd.DataFrame]:
    """Every table written under ``tables/``: file stem -> frame (empty frames are skipped)."""
    out: dict[str, pd.DataFrame] = {}
    for name in ("summary", "items", "retrieval", "spectra", "paired"):
        frame = getattr(analysis, name, None)
        if isinstance(frame, pd.DataFrame) and len(frame):
            out[name] = frame
    if "summary" in out:
        out["summary_wide"] = wide_summary(out["summary"])
    cont = getattr(analysis, "continual", None)
    if isinstance(cont, pd.DataFrame) and len(cont):
        out["continual"] = cont
    elif isinstance(cont, dict):
        for key, frame in cont.items():
            if isinstance(frame, pd.DataFrame) and len(frame):
                out[f"continual_{key}"] = frame
    return out
