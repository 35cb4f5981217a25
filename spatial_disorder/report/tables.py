"""Tables of a report: the CSV files, the headline table printed on the terminal, and the metric definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics.registry import METRICS, flagged


def headline_metrics() -> list[str]:
    """Metrics in the terminal summary and the overview table, in registration order (flag ``headline``)."""
    return [m.name for m in flagged("headline")]


def definitions(names) -> pd.DataFrame:
    """Definitions of the given metrics from the registry: [metric, unit, worse_when, description, formula]."""
    rows = []
    for name in names:
        info = METRICS.get(name)
        rows.append({"metric": name, "unit": info.unit if info else "", "worse_when": info.worse_when if info else "",
                     "description": info.description if info else "(not in the registry)", "formula": info.formula if info else ""})
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
    names = headline_metrics()
    sel = s[(s["stage_a"].astype(str) == str(ref)) & (s["stage_b"].astype(str) == str(last)) & s["metric"].isin(names)]
    if not len(sel):
        return pd.DataFrame()
    table = sel.pivot_table(index=["probe", "metric"], columns="modality", values="value", aggfunc="first")
    order = {m: i for i, m in enumerate(names)}
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


CSV_TABLES = ("summary", "items", "retrieval", "spectra", "paired", "continual", "cross_stage", "trajectories", "bridge_curve")


def csv_tables(analysis, ref: str | None = None, last: str | None = None, all_items: bool = True) -> dict[str, pd.DataFrame]:
    """Every table written under ``tables/``: file stem -> frame (empty frames are skipped).

    The per-item tables (``items``: one row per item, stage pair and modality; ``paired``: one row per caption and
    stage) are by far the largest (about 0.5 million rows for COCO's 25,000 captions over 9 stage pairs), so with
    ``all_items=False`` they keep only the report's own pair ``ref`` -> ``last`` (and those two stages); the full
    frames stay in ``RunAnalysis.items`` and ``RunAnalysis.paired``."""
    out = {name: getattr(analysis, name) for name in CSV_TABLES if len(getattr(analysis, name))}
    if not all_items and ref is not None and last is not None:
        if "items" in out:
            it = out["items"]
            out["items"] = it[(it["stage_a"].astype(str) == str(ref)) & (it["stage_b"].astype(str) == str(last))]
        if "paired" in out:
            pa = out["paired"]
            out["paired"] = pa[pa["stage"].astype(str).isin([str(ref), str(last)])]
    if "summary" in out:
        out["summary_wide"] = wide_summary(out["summary"])
    return out
