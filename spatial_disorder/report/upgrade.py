"""The report section "Upgrade without re-indexing": the bridge's table and learning curve, read from the analysis.

Every number comes from ``RunAnalysis.summary`` (the bridge family's metrics) and ``RunAnalysis.bridge_curve``;
nothing is computed here beyond picking rows.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .figures import ReportFigure, _figure, _fmt, _probe_label, summary_values
from .style import MODALITY_COLORS

SETTINGS = (("old/old", "heldout_old_"), ("new/new", "heldout_new_"), ("cross (no map)", "cross_"), ("bridged old index", "bridge_"))
GOAL = 0.95  # the recovery a team would accept before skipping re-indexing (docs/bridge.md)
_IN_TABLE = re.compile(r"^(heldout_old|heldout_new|cross|bridge)_(t2i|i2t)_(R@\d+|compatible)$")


def in_table(metric: str) -> bool:
    """Whether ``upgrade_table`` shows the metric (the section's values table then leaves it out)."""
    return bool(_IN_TABLE.match(metric))


def upgrade_table(analysis, probe: str, ref: str, last: str) -> pd.DataFrame:
    """Old/old, new/new, cross and bridged retrieval on the held-out items, ``ref`` -> ``last``, per direction.

    Columns: setting, R@1 / R@5 / R@10 per direction (percent), recovery of the new model's R@1 and the BCT criterion
    (cross and bridged rows). Empty when the bridge family has no values for the pair.
    """
    values = summary_values(analysis.summary)

    def value(metric):
        return values(metric, probe, "cross", ref, last)

    if not np.isfinite(value("bridge_t2i_R@1")):
        return pd.DataFrame()
    rows = []
    for label, prefix in SETTINGS:
        row = {"setting": label}
        for d in ("t2i", "i2t"):
            for k in (1, 5, 10):
                row[f"{d} R@{k}"] = value(f"{prefix}{d}_R@{k}")
        for d in ("t2i", "i2t"):
            row[f"{d} R@1 recovery"] = value(f"bridge_{d}_R@1_recovery") if prefix == "bridge_" else np.nan
            row[f"{d} ≥ old/old"] = value(f"{prefix}{d}_compatible") if prefix in ("cross_", "bridge_") else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def recovery_curve(analysis, probe: str, n_probes: int = 1) -> ReportFigure | None:
    """Recovery of the new model's R@1 (left) and agreement (right) against the number of calibration images."""
    curve = analysis.bridge_curve
    if curve is None or not len(curve):
        return None
    sel = curve[curve["probe"].astype(str) == probe]
    sel = sel[np.isfinite(sel["t2i_R@1_recovery"].to_numpy(float))]
    if not len(sel):
        return None
    ref, last = str(sel["stage_a"].iloc[0]), str(sel["stage_b"].iloc[0])
    # a fixed frame (no layout engine: one draw per save); the gap leaves room for the right panel's label and ticks,
    # the bottom margin for the legends under the panels (inside, they hid points and the goal line's label)
    height, bottom, below = 4.2, 1.15, 0.55  # below: from the panels' lower edge to the top of the legends, inches
    fig = _figure(10.5, height, {"left": 0.8, "right": 0.2, "bottom": bottom, "top": 0.35, "gap": 0.95, "panels": 2})
    axes = fig.subplots(1, 2)
    styles = {"orthogonal": "-", "ridge": ":"}
    colors = {"t2i": MODALITY_COLORS["text"], "i2t": MODALITY_COLORS["image"], "text": MODALITY_COLORS["text"], "image": MODALITY_COLORS["image"]}
    words = {"t2i": "text → image", "i2t": "image → text", "image": "images", "text": "captions"}
    for method, m in sel.groupby("method", sort=False):
        m = m.sort_values("calibration_images")
        x = m["calibration_images"].to_numpy(float)
        for d in ("t2i", "i2t"):
            axes[0].plot(x, m[f"{d}_R@1_recovery"].to_numpy(float), styles.get(method, "--"), marker="o", color=colors[d],
                         label=f"{words[d]}, {method}")
        for mod in ("image", "text"):
            axes[1].plot(x, m[f"{mod}_agreement"].to_numpy(float), styles.get(method, "--"), marker="o", color=colors[mod],
                         label=f"{words[mod]}, {method}")
    axes[0].axhline(1.0, color="black", linewidth=0.8)
    axes[0].axhline(GOAL, color="grey", linewidth=0.8, linestyle="--")
    axes[0].annotate(f"{GOAL:.0%} goal", (0.01, GOAL), xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="grey")
    axes[0].set_ylabel("bridged R@1 / new model's R@1")
    axes[0].set_title("recovery of full re-embedding")
    axes[1].set_ylabel("share of held-out items")
    axes[1].set_title("agreement with re-embedding")
    axes[1].set_ylim(top=1.02)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("calibration images")
        ticks = sorted(set(sel["calibration_images"].astype(int)))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=8, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -below / (height - bottom - 0.35)))
    return ReportFigure(f"bridge_curve_{probe}", "upgrade", f"Bridge learning curve, {ref} → {last}{_probe_label(probe, n_probes)}", fig,
                        _curve_reading(sel))


def _curve_reading(sel: pd.DataFrame) -> str:
    orth = sel[sel["method"] == "orthogonal"].sort_values("calibration_images")
    if not len(orth):
        return "Recovery and agreement of the fitted maps against the number of calibration images."
    top = orth.iloc[-1]
    parts = [f"With {int(top['calibration_images'])} calibration images the orthogonal bridge recovers "
             f"{_fmt(100 * top['t2i_R@1_recovery'], 0)}% of the new model's text → image R@1 and "
             f"{_fmt(100 * top['i2t_R@1_recovery'], 0)}% of its image → text R@1 on {int(top['held_images'])} held-out images; "
             f"{_fmt(100 * top['image_agreement'], 0)}% of bridged images and {_fmt(100 * top['text_agreement'], 0)}% of bridged "
             "captions find their own re-embedded vector first."]
    enough = orth[(orth["t2i_R@1_recovery"] >= GOAL) & (orth["i2t_R@1_recovery"] >= GOAL)]
    if len(enough):
        parts.append(f"{int(enough['calibration_images'].iloc[0])} images already reach {GOAL:.0%} recovery in both directions.")
    else:
        parts.append(f"No calibration size reaches {GOAL:.0%} recovery in both directions.")
    return " ".join(parts)


def upgrade_reading(table: pd.DataFrame) -> str:
    """One sentence under the table: is re-indexing needed, by the BCT criterion and the recovery?"""
    if not len(table):
        return ""
    bridged = table[table["setting"] == "bridged old index"].iloc[0]
    cross = table[table["setting"].str.startswith("cross")].iloc[0]
    ok = [d for d in ("t2i", "i2t") if bridged[f"{d} ≥ old/old"] == 1]
    return (f"Without a map, new queries against the old index reach {_fmt(cross['t2i R@1'])}% text → image and "
            f"{_fmt(cross['i2t R@1'])}% image → text R@1; with the bridge {_fmt(bridged['t2i R@1'])}% and {_fmt(bridged['i2t R@1'])}% "
            f"({_fmt(100 * bridged['t2i R@1 recovery'], 0)}% and {_fmt(100 * bridged['i2t R@1 recovery'], 0)}% of re-embedding). "
            + ("The bridged index is at least as good as the old model in both directions (BCT compatible)." if len(ok) == 2 else
               f"The bridged index is below the old model's own retrieval in {2 - len(ok)} direction(s).")) if len(table) else ""
