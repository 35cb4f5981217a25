"""`sd-analyze compare`: two or more runs over the same probe items and stages, side by side.

Stages are matched by position (stage 0 with stage 0, ...), so a baseline and a Mod-X run whose stages are
named differently still line up; the probe sets must hold the same items.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..jsonutil import records
from ..metrics.registry import METRICS, flagged
from ..run.compat import check_same_items as same_items
from .figures import ReportFigure, _figure, figure_formats, render_figure, stage_order
from .html import Section, kv_table, page
from .output import report_files, write_folder
from .style import color_cycle, report_style
from .tables import definitions


def compare_metrics() -> list[tuple[str, str]]:
    """(metric, modality) panels of the comparison figures: every registered metric flagged ``compare``."""
    return [(m.name, mod) for m in flagged("compare") for mod in m.modalities]


def check_same_items(runs) -> None:
    """Refuse runs whose probe sets (names and item ids) or stage counts differ (one clear line)."""
    first = runs[0]
    for other in runs[1:]:
        same_items(first, other, purpose="compare")
        if len(other.stages) != len(first.stages):
            raise InputError(f"{other.path}: {len(other.stages)} stages but {first.path} has {len(first.stages)}; compare needs the same number of stages")


def run_names(runs) -> list[str]:
    names = []
    for i, r in enumerate(runs):
        base = Path(str(r.path)).name or f"run{i}"
        names.append(base if base not in names else f"{base}#{i}")
    return names


def aligned_summary(analyses, names) -> pd.DataFrame:
    """Summaries of all runs, stages replaced by their positions: [pair, stage_a, stage_b, probe, modality, metric, <run>...]."""
    frames = []
    for analysis, name in zip(analyses, names):
        stages = stage_order(analysis)
        pos = {s: i for i, s in enumerate(stages)}
        s = analysis.summary.copy()
        s["ia"] = s["stage_a"].astype(str).map(pos)
        s["ib"] = s["stage_b"].astype(str).map(pos)
        s["run"] = name
        frames.append(s)
    allf = pd.concat(frames, ignore_index=True)
    wide = allf.pivot_table(index=["ia", "ib", "probe", "modality", "metric"], columns="run", values="value", aggfunc="first").reset_index()
    wide = wide.rename(columns={"ia": "stage_a", "ib": "stage_b"})
    for name in names[1:]:
        if name in wide.columns and names[0] in wide.columns:
            wide[f"{name} - {names[0]}"] = wide[name] - wide[names[0]]
    cols = ["stage_a", "stage_b", "probe", "modality", "metric"] + [c for c in wide.columns if c not in ("stage_a", "stage_b", "probe", "modality", "metric")]
    return wide[cols].sort_values(["probe", "metric", "modality", "stage_a", "stage_b"]).reset_index(drop=True)


def aligned_retrieval(analyses, names) -> pd.DataFrame:
    frames = []
    for analysis, name in zip(analyses, names):
        pos = {s: i for i, s in enumerate(stage_order(analysis))}
        r = analysis.retrieval.copy()
        r["stage"] = r["stage"].astype(str).map(pos)
        r["run"] = name
        frames.append(r)
    allf = pd.concat(frames, ignore_index=True)
    wide = allf.pivot_table(index=["stage", "probe", "direction", "metric"], columns="run", values="value", aggfunc="first").reset_index()
    for name in names[1:]:
        if name in wide.columns and names[0] in wide.columns:
            wide[f"{name} - {names[0]}"] = wide[name] - wide[names[0]]
    return wide


def _metric_figure(summary: pd.DataFrame, names, probe: str, ref: int, n_stages: int, diff: bool) -> ReportFigure | None:
    panels = [(m, mod) for m, mod in compare_metrics() if ((summary["metric"] == m) & (summary["modality"] == mod)).any()]
    if not panels:
        return None
    cols = 3
    rows = int(np.ceil(len(panels) / cols))
    # a fixed frame (no layout engine: one draw per save): gaps leave room for each panel's labels and the next title
    width, height, bottom, top, row_gap = 4.0 * cols, 3.0 * rows + 0.3, 0.55, 0.35, 0.9
    fig = _figure(width, height, {"left": 0.75, "right": 0.2, "bottom": bottom, "top": top, "gap": 0.85, "panels": cols})
    if rows > 1:
        fig.subplots_adjust(hspace=row_gap / ((height - bottom - top - row_gap * (rows - 1)) / rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    x = np.arange(n_stages)
    series = names[1:] if diff else names
    colors = color_cycle(len(names))
    for ax, (metric, mod) in zip(axes, panels):
        sel = summary[(summary["metric"] == metric) & (summary["modality"] == mod) & (summary["probe"].astype(str) == probe) & (summary["stage_a"] == ref)]
        for k, name in enumerate(series):
            col = f"{name} - {names[0]}" if diff else name
            if col not in sel.columns:
                continue
            y = np.full(n_stages, np.nan)
            for b, v in zip(sel["stage_b"], sel[col]):
                y[int(b)] = v

            ax.plot(x, y, marker="o", color=colors[k + 1 if diff else k], label=col)
        if diff:
            ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{metric} ({mod})", fontsize=9)
        ax.set_xticks(x)
        ax.set_xlabel("stage (position)")
        ax.set_ylabel(("difference, " if diff else "") + METRICS[metric].unit)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    last = n_stages - 1
    sel = summary[(summary["metric"] == "rotation_mean_deg") & (summary["probe"].astype(str) == probe) & (summary["stage_a"] == ref) & (summary["stage_b"] == last)]
    parts = []
    for _, row in sel.iterrows():
        parts.append(f"{row['modality']}: " + ", ".join(f"{n} {row[n]:.1f}°" for n in names if n in row and np.isfinite(row[n])))
    reading = (f"Mean rotation against stage {ref} by the last stage: " + "; ".join(parts) + ".") if parts else "Metrics across stages for every run."
    if diff:
        reading = "Differences to " + names[0] + " (positive: the other run is higher). " + reading
    key = f"compare_{'diff' if diff else 'metrics'}_{probe}"
    title = f"{'Differences' if diff else 'Metrics'} across stages against stage {ref} ({probe})"
    return ReportFigure(key, "compare", title, fig, reading)


def _retrieval_figure(retrieval: pd.DataFrame, names, probe: str, n_stages: int) -> ReportFigure | None:
    sel = retrieval[(retrieval["probe"].astype(str) == probe) & (retrieval["metric"] == "R@1")]
    if not len(sel):
        return None
    fig = _figure(10, 3.6, {"left": 0.75, "right": 0.2, "bottom": 0.55, "top": 0.35, "gap": 0.3, "panels": 2})
    axes = fig.subplots(1, 2, sharey=True)
    colors = color_cycle(len(names))
    parts = []
    for ax, direction, label in zip(axes, ("i2t", "t2i"), ("image → text", "text → image")):
        d = sel[sel["direction"] == direction].sort_values("stage")
        for k, name in enumerate(names):
            if name in d.columns:
                ax.plot(d["stage"], d[name], marker="o", color=colors[k], label=name)
                if direction == "i2t" and len(d):
                    parts.append(f"{name} {d[name].iloc[-1]:.1f}%")
        ax.set_title(label)
        ax.set_xlabel("stage (position)")
        ax.set_xticks(range(n_stages))
    axes[0].set_ylabel("R@1 (%)")
    axes[1].legend()
    reading = "Image→text R@1 at the last stage: " + ", ".join(parts) + "."
    return ReportFigure(f"compare_retrieval_{probe}", "compare", f"R@1 across stages ({probe})", fig, reading)


@dataclass
class CompareReport:
    names: list
    summary: pd.DataFrame
    retrieval: pd.DataFrame
    html: str
    rendered: dict = field(default_factory=dict)

    def files(self) -> dict[str, bytes]:
        doc = {"schema": "spatial-disorder-compare", "version": 1, "runs": self.names,
               "summary": records(self.summary), "retrieval": records(self.retrieval)}
        tables = {"compare_summary": self.summary, "compare_retrieval": self.retrieval}
        return report_files(self.html, tables, self.rendered, {"compare.json": (json.dumps(doc, indent=2) + "\n").encode("utf-8")})

    def write(self, out) -> Path:
        return write_folder(out, self.files())


def shown_probes(runs, probes=None) -> list[str]:
    """The probe sets a comparison shows, sorted: ``probes`` (default: every set of the first run), each of which the
    runs must hold (one error line otherwise)."""
    have = sorted(runs[0].probes)
    shown = have if not probes else sorted(dict.fromkeys(probes))
    unknown = [p for p in shown if p not in runs[0].probes]
    if unknown:
        raise InputError(f"no probe set {unknown[0]!r}; probe sets are {have}")
    return shown


def compare_runs(runs, analyses, png: bool = False, ref: int = 0, probes=None) -> CompareReport:
    """Side-by-side comparison of analyses of runs with the same probe items and stage count.

    ``ref``: the position of the stage every run is compared against (the analyses' own reference stage: their pairs
    must include ``ref`` -> each stage); ``probes``: the probe sets shown (default: every set of the first run)."""
    if len(runs) < 2:
        raise InputError("compare needs at least two runs")
    check_same_items(runs)
    names = run_names(runs)
    summary = aligned_summary(analyses, names)
    retrieval = aligned_retrieval(analyses, names)
    n_stages = len(runs[0].stages)
    if not 0 <= ref < n_stages:
        raise InputError(f"reference stage position {ref} is out of range: the runs hold {n_stages} stages")
    shown = shown_probes(runs, probes)
    figs = []
    with report_style():
        for probe in shown:
            figs += [
                _metric_figure(summary, names, probe, ref, n_stages, diff=False),
                _metric_figure(summary, names, probe, ref, n_stages, diff=True),
                _retrieval_figure(retrieval, names, probe, n_stages),
            ]
    figs = [f for f in figs if f is not None]
    rendered = {f.key: render_figure(f, figure_formats(png)) for f in figs}
    overview = kv_table(
        [(name, f"{r.path} — stages: {', '.join(r.stages)}; mode: {r.metadata.get('mode', '?')}; model: {r.metadata.get('model', '?')}")
         for name, r in zip(names, runs)]
        + [("probe sets", ", ".join(shown)), ("stage matching", "by position (0 = before continual training)")]
    )
    last = n_stages - 1
    key_rows = summary[(summary["stage_a"] == ref) & (summary["stage_b"] == last) & summary["probe"].astype(str).isin(shown)]
    sections = [
        Section("metrics", "Metrics across stages", f"Each run against its own stage {ref}, and the differences to the first run.",
                [(f, rendered[f.key]["svg"]) for f in figs if f.key.startswith("compare_metrics") or f.key.startswith("compare_diff")],
                tables=[(f"Stage {ref} → {last}", key_rows)]),
        Section("retrieval", "Retrieval", "R@1 of every run at every stage.",
                [(f, rendered[f.key]["svg"]) for f in figs if f.key.startswith("compare_retrieval")],
                tables=[("R@1 and rsum", retrieval[retrieval["metric"].isin(["R@1", "rsum"]) & retrieval["probe"].astype(str).isin(shown)])]),
    ]
    sections[0].definitions = definitions(sorted(set(key_rows["metric"])))
    html = page(f"Spatial-disorder comparison: {' vs '.join(names)}", overview, sections)
    for f in figs:
        f.figure.clear()
    return CompareReport(names, summary, retrieval, html, rendered)
