"""Report figures, each drawn from the analysis' tidy frames, with a one-sentence reading computed from the numbers.

Every function returns a ``ReportFigure`` (or ``None`` when the data it needs is absent). Figures are built
on ``matplotlib.figure.Figure`` directly (no pyplot, no global figure registry, any backend).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .style import MODALITY_COLORS, SEQUENTIAL_CMAP, color_cycle, report_style

SECTIONS = ("retrieval", "rotation", "topology", "neighbours", "intermodal", "upgrade")
# A scatter of more points is embedded in its SVG as one image: SVG writes each point as an element with its own
# style, which made a scatter of the quickstart's 1,200 captions the slowest figure to save.
RASTER_POINTS = 500
MODALITIES = ("image", "text")


@dataclass
class ReportFigure:
    """One figure of the report: where it goes, what it is called, and what it shows in one sentence."""

    key: str  # file stem, e.g. "rotation_hist_val"
    section: str  # one of SECTIONS
    title: str
    figure: object  # matplotlib.figure.Figure
    reading: str


def _figure(width: float, height: float, margins: dict | None = None):
    """A figure of ``width`` x ``height`` inches.

    With ``margins`` (inches: left, right, bottom, top, and ``gap`` between ``panels`` side-by-side panels) the
    panels sit in a fixed frame and the figure has no layout engine, so saving it draws it once; without, constrained
    layout places everything, at the cost of a second draw per save (about a third of a report's drawing time).
    """
    from matplotlib.figure import Figure

    if margins is None:
        return Figure(figsize=(width, height), layout="constrained")
    m = {"left": 0.8, "right": 0.2, "bottom": 0.6, "top": 0.4, **margins}
    fig = Figure(figsize=(width, height), layout=None)
    n, gap = m.get("panels", 1), m.get("gap", 0.0)
    panel = (width - m["left"] - m["right"] - gap * (n - 1)) / n  # matplotlib's wspace is a fraction of a panel's width
    fig.subplots_adjust(left=m["left"] / width, right=1 - m["right"] / width, bottom=m["bottom"] / height, top=1 - m["top"] / height,
                        wspace=gap / panel if n > 1 else None)
    return fig


def text_inches(labels, size: float = 10.0) -> float:
    """Rough width in inches of the longest of ``labels`` at ``size`` points (DejaVu Sans: about 0.6 em a character),
    used to leave room for tick labels and legends in the fixed layouts."""
    return max((len(str(x)) for x in labels), default=0) * size * 0.6 / 72


def legend_inches(labels, title: str = "", size: float = 9.0) -> float:
    """Width of a one-column legend beside the axes: its longest entry (or title) plus the marker and padding."""
    return text_inches([*labels, title], size) + 4.0 * size / 72 + 0.1


def stage_order(analysis) -> list[str]:
    """Stage names in run order."""
    return analysis.stages


def lookup(frame: pd.DataFrame, columns: tuple[str, ...], field: str = "value") -> Callable[..., float]:
    """A function of the key ``columns``' values (compared as text) that returns the frame's ``field`` there, or NaN:
    built in one pass over the frame, for a figure that reads dozens of single values (filtering the frame for each
    cost more than drawing the figure). The first matching row wins, as a filter would take it."""
    table: dict = {}
    if len(frame) and field in frame.columns:
        keys = zip(*(map(str, frame[c].tolist()) for c in columns))  # tolist: iterating an Arrow column costs 5x more
        for key, value in zip(keys, frame[field].to_numpy(dtype=float)):
            table.setdefault(key, float(value))
    nan = float("nan")
    return lambda *key: table.get(tuple(str(k) for k in key), nan)


def summary_values(summary: pd.DataFrame) -> Callable[[str, str, str, str, str], float]:
    """``value(metric, probe, modality, stage_a, stage_b)`` of the tidy summary, NaN where it was not computed."""
    return lookup(summary, ("metric", "probe", "modality", "stage_a", "stage_b"))


def summary_value(summary: pd.DataFrame, metric: str, probe: str, modality: str, a: str, b: str) -> float:
    """One value of the tidy summary, or NaN when that combination was not computed (``summary_values`` for many)."""
    return summary_values(summary)(metric, probe, modality, a, b)


def pair_matrix(summary: pd.DataFrame, metric: str, probe: str, modality: str, stages: list[str], symmetric: bool = True) -> np.ndarray:
    """Stage x stage matrix of one summary metric (NaN where the pair was not analysed)."""
    n = len(stages)
    index = {s: i for i, s in enumerate(stages)}
    mat = np.full((n, n), np.nan)
    sel = summary[(summary["metric"] == metric) & (summary["probe"].astype(str) == probe) & (summary["modality"] == modality)]
    for a, b, v in zip(sel["stage_a"].astype(str), sel["stage_b"].astype(str), sel["value"]):
        if a in index and b in index:
            mat[index[a], index[b]] = v
            if symmetric and np.isnan(mat[index[b], index[a]]):
                mat[index[b], index[a]] = v
    return mat


def distinct(column: pd.Series) -> set[str]:
    """The distinct values of a column, as strings (one pass over its unique values, not over every row)."""
    return {str(v) for v in column.unique()}


def _fmt(v: float, digits: int = 1) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _probe_label(probe: str, n_probes: int) -> str:
    return f" ({probe})" if n_probes > 1 else ""


# --- intra-modal rotation ------------------------------------------------------------------------------
def rotation_histograms(analysis, probe: str, ref: str, n_probes: int = 1) -> ReportFigure | None:
    items, col = analysis.items, "rotation_deg"
    stages = stage_order(analysis)
    if col not in items.columns or not len(items):
        return None
    sel = items[(items["probe"].astype(str) == probe) & (items["stage_a"].astype(str) == ref)]
    present = distinct(sel["stage_b"])
    later = [s for s in stages if s != ref and s in present]
    if not later:
        return None
    labels = [f"{ref} → {stage}" for stage in later]
    fig = _figure(11.5, 3.6, {"left": 0.75, "right": legend_inches(labels, "stage pair") + 0.1, "bottom": 0.55, "top": 0.35, "gap": 0.3,
                               "panels": 2})
    axes = fig.subplots(1, 2, sharey=True)
    cmap = _cmap(len(later))
    vals_all = sel[col].to_numpy(dtype=float)
    vals_all = vals_all[np.isfinite(vals_all)]
    hi = float(vals_all.max()) if len(vals_all) else 1.0
    lo = float(vals_all.min()) if len(vals_all) else 0.0
    lo = 0.0 if lo < 0.3 * hi else float(np.floor(lo * 0.95))  # zoom in when every item rotates by a similar angle
    bins = np.linspace(lo, max(hi * 1.02, lo + 1e-6), 41)
    for ax, mod in zip(axes, MODALITIES):
        sub = sel[sel["modality"] == mod]
        for i, stage in enumerate(later):
            vals = sub.loc[sub["stage_b"].astype(str) == stage, col].to_numpy(dtype=float)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                counts = np.histogram(vals, bins=bins)[0] / len(vals)
                step_line(ax, counts, bins, linewidth=1.6, color=cmap[i], label=f"{ref} → {stage}")
        ax.set_title(f"{mod} embeddings")
        ax.set_xlabel("rotation angle per item (degrees)")
    axes[0].set_ylabel("fraction of items")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title="stage pair")
    last = later[-1]
    parts = []
    value = summary_values(analysis.summary)
    for mod in MODALITIES:
        mean = value("rotation_mean_deg", probe, mod, ref, last)
        p90 = value("rotation_p90_deg", probe, mod, ref, last)
        if np.isfinite(mean):
            parts.append(f"{mod} embeddings rotate by {_fmt(mean)}° on average (90th percentile {_fmt(p90)}°)")
    reading = (
        f"By stage {last}, measured against {ref}, " + " and ".join(parts) + "." if parts else "No rotation values were computed."
    )
    return ReportFigure(f"rotation_hist_{probe}", "rotation", f"Per-item rotation angles{_probe_label(probe, n_probes)}", fig, reading)


def step_line(ax, values, edges, **style):
    """A step outline (``values[i]`` over ``[edges[i], edges[i + 1]]``, down to 0 at both ends), as ``ax.stairs`` or a
    step histogram draws it, but as one line: a patch's data limits are found segment by segment, which made the step
    figures the report's slowest."""
    values, edges = np.asarray(values, dtype=float), np.asarray(edges, dtype=float)
    x = np.repeat(edges, 2)
    y = np.r_[0.0, np.repeat(values, 2), 0.0]
    return ax.plot(x, y, **style)[0]


def _cmap(n: int) -> list:
    from matplotlib import colormaps

    cm = colormaps[SEQUENTIAL_CMAP]
    return [cm(x) for x in (np.linspace(0.0, 0.85, n) if n > 1 else [0.0])]


def stage_heatmaps(
    matrices: dict[str, np.ndarray], stages: list[str], key: str, section: str, title: str, unit: str, reading: str, fmt: str = "{:.1f}",
    limits: tuple[float, float] | None = None,
) -> ReportFigure | None:
    """Stage x stage heatmaps, one panel per entry of ``matrices`` (NaN cells: pair not analysed). ``limits``: the values
    the quantity can take (R@1: 0-100%), which the colour scale of a constant matrix stays within."""
    mats = {k: m for k, m in matrices.items() if m is not None and np.isfinite(m).any()}
    if not mats:
        return None
    n = len(stages)
    side = min(max(3.2, 0.55 * n + 1.8), 7.0)
    rotate = n > 4
    tick_w = text_inches(stages)
    # panels of (side - 1) inches; the frame grows with the stage names (tick labels left of and below each panel)
    # and the colour bar, which takes a fifth of the panels' width (gap included) and puts its labels in the right margin
    square, gap = side - 1.0, tick_w + 0.9
    left, right, bottom, top = tick_w + 0.5, 0.9, (0.72 * tick_w if rotate else 0.2) + 0.5, 0.35
    fig = _figure(left + right + len(mats) * square + (len(mats) - 1) * gap, 0.82 * square + bottom + top,
                  {"left": left, "right": right, "bottom": bottom, "top": top, "gap": gap, "panels": len(mats)})
    axes = np.atleast_1d(fig.subplots(1, len(mats)))
    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
    vmin, vmax = constant_scale(float(finite.min()), float(finite.max()), limits)
    image = None
    for ax, (label, mat) in zip(axes, mats.items()):
        masked = np.ma.masked_invalid(mat)
        image = ax.imshow(masked, cmap=SEQUENTIAL_CMAP, vmin=vmin, vmax=vmax, origin="upper")
        ax.set_facecolor("#dddddd")
        ax.grid(False)
        ax.set_xticks(range(n), stages, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_yticks(range(n), stages)
        ax.set_title(label)
        ax.set_xlabel("stage")
        ax.set_ylabel("stage")
        if n <= 12:
            mid = (vmin + vmax) / 2
            for i in range(n):
                for j in range(n):
                    v = mat[i, j]
                    text = "–" if not np.isfinite(v) else fmt.format(v)
                    color = "black" if (np.isfinite(v) and v > mid) or not np.isfinite(v) else "white"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    fig.colorbar(image, ax=list(axes), shrink=0.85, label=unit)
    return ReportFigure(key, section, title, fig, reading)


def constant_scale(vmin: float, vmax: float, limits: tuple[float, float] | None = None) -> tuple[float, float]:
    """A colour scale for values from ``vmin`` to ``vmax``: as they are, or one unit wide from a constant up (around it
    when ``limits`` are given, and inside them: a constant R@1 of 100% gets 99-100%, not a scale up to 101%)."""
    if vmax - vmin >= 1e-12:
        return vmin, vmax
    if limits is None:
        return vmin, vmin + 1.0
    lo, hi = limits
    low = max(lo, vmin - 0.5)
    high = min(hi, low + 1.0)
    return max(lo, high - 1.0), high


def on_the_lines(summary: pd.DataFrame, metric: str, probe: str, stages: list[str], ref: str) -> bool:
    """Whether every analysed stage pair of ``metric`` is one that ``pair_lines`` draws: against ``ref``, or between
    consecutive stages (the default pairs, analysis.default_pairs)."""
    order = {s: i for i, s in enumerate(stages)}
    sel = summary[(summary["metric"] == metric) & (summary["probe"].astype(str) == probe)]
    for a, b in zip(sel["stage_a"].astype(str), sel["stage_b"].astype(str)):
        if ref not in (a, b) and not (a in order and b in order and abs(order[a] - order[b]) == 1):
            return False
    return True


def stage_pairs_figure(analysis, probe: str, ref: str, metric: str, *, key: str, section: str, title: str, unit: str,
                       reading: str, self_value: float, fmt: str = "{:.1f}", n_probes: int = 1) -> ReportFigure | None:
    """``metric`` between stages as two lines per modality when every analysed pair lies on them (against ``ref``, or
    between consecutive stages: the default pairs), and otherwise, when other pairs were analysed
    (``analyze_run(run, pairs=...)``), as a stage x stage heatmap. A heatmap of the default pairs of six stages is
    mostly grey and shows each of its nine values twice."""
    stages = stage_order(analysis)
    if not on_the_lines(analysis.summary, metric, probe, stages, ref):
        mats = {f"{m} embeddings": pair_matrix(analysis.summary, metric, probe, m, stages) for m in MODALITIES}
        return stage_heatmaps(mats, stages, key, section, f"{title}, stage × stage{_probe_label(probe, n_probes)}", unit,
                              reading + " Grey cells are stage pairs that were not analysed.", fmt)
    return pair_lines(analysis, probe, ref, metric, key=key, section=section,
                      title=f"{title} across stages{_probe_label(probe, n_probes)}", unit=unit, reading=reading,
                      self_value=self_value)


def pair_lines(analysis, probe: str, ref: str, metric: str, *, key: str, section: str, title: str, unit: str, reading: str,
               self_value: float) -> ReportFigure | None:
    """Per modality, ``metric`` of each stage against ``ref`` (solid; ``self_value`` at ``ref`` itself) and against
    the previous stage (dashed). NaN where a pair was not analysed; None when no pair of this probe set was."""
    stages = stage_order(analysis)
    s = analysis.summary
    if not len(s) or not ((s["metric"] == metric) & (s["probe"].astype(str) == probe)).any():
        return None
    value = summary_values(s)

    def either(mod, a, b):  # the metrics drawn this way are symmetric: a pair may be stored in either order
        v = value(metric, probe, mod, a, b)
        return v if np.isfinite(v) else value(metric, probe, mod, b, a)

    labels = [f"{mod}: {what}" for mod in MODALITIES for what in (f"against {ref}", "previous stage")]
    legend_w = legend_inches(labels)
    # the legend beside the axes: never over a line, and no search for the emptiest corner
    fig = _figure(6.4 + legend_w, 3.6, {"left": 0.75, "right": legend_w + 0.1, "bottom": 0.55, "top": 0.15})
    ax = fig.subplots()
    x = np.arange(len(stages))
    for mod in MODALITIES:
        vs_ref = [either(mod, ref, st) if st != ref else self_value for st in stages]
        cons = [np.nan] + [either(mod, a, b) for a, b in zip(stages[:-1], stages[1:])]
        ax.plot(x, vs_ref, marker="o", color=MODALITY_COLORS[mod], label=f"{mod}: against {ref}")
        ax.plot(x, cons, marker="s", linestyle="--", color=MODALITY_COLORS[mod], alpha=0.8, label=f"{mod}: previous stage")
    ax.set_xticks(x, stages)
    ax.set_xlabel("stage")
    ax.set_ylabel(unit)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return ReportFigure(key, section, title, fig, reading)


def rotation_stages(analysis, probe: str, ref: str, n_probes: int = 1) -> ReportFigure | None:
    worst = _worst_pair(analysis.summary, "rotation_mean_deg", probe, higher=True)
    if not worst:
        return None
    reading = (f"The largest mean rotation between two analysed stages is {_fmt(worst[0])}° ({worst[1]} embeddings, "
               f"{worst[2]} → {worst[3]}).")
    return stage_pairs_figure(analysis, probe, ref, "rotation_mean_deg", key=f"rotation_stages_{probe}", section="rotation",
                              title="Mean rotation angle", unit="mean rotation angle (degrees)", reading=reading,
                              self_value=0.0, n_probes=n_probes)


def overlap_stages(analysis, probe: str, ref: str, n_probes: int = 1) -> ReportFigure | None:
    k = analysis.k
    worst = _worst_pair(analysis.summary, "knn_overlap_mean", probe, higher=False)
    if not worst:
        return None
    reading = (f"The lowest neighbour overlap is {_fmt(worst[0], 2)} ({worst[1]} embeddings, {worst[2]} → {worst[3]}): "
               f"on average only {_fmt(100 * worst[0], 0)}% of an item's {k} nearest neighbours are kept.")
    return stage_pairs_figure(analysis, probe, ref, "knn_overlap_mean", key=f"overlap_stages_{probe}", section="neighbours",
                              title=f"Neighbour overlap (top-{k})", unit="fraction of neighbours kept (0-1)", reading=reading,
                              self_value=1.0, fmt="{:.2f}", n_probes=n_probes)


def cross_stage_matrix(analysis, probe: str) -> np.ndarray | None:
    """[image stage, text stage] matrix of cross-stage image-to-text R@1 (%) from the analysis, or None."""
    cs = analysis.cross_stage
    sel = cs[cs["probe"].astype(str) == probe] if len(cs) else cs
    if not len(sel):
        return None
    stages = stage_order(analysis)
    m = sel.pivot_table(index="image_stage", columns="text_stage", values="value", aggfunc="first")
    return m.reindex(index=stages, columns=stages).to_numpy(dtype=float)


def r1_heatmap(analysis, probe: str, n_probes: int = 1) -> ReportFigure | None:
    """Cross-stage image-to-text R@1: images embedded at the row stage, captions at the column stage."""
    matrix = cross_stage_matrix(analysis, probe)
    stages = stage_order(analysis)
    if matrix is None or len(stages) < 2:
        return None
    queries = analysis.cross_stage["queries"].max()
    chance_pct = chance_r1_pct(analysis.text_to_image.get(probe))
    diag = np.diag(matrix)
    off = matrix[~np.eye(len(stages), dtype=bool)]
    if off.size and np.isfinite(off).any():
        reading = compatibility_reading(diag, off, chance_pct)
    else:
        reading = f"Image→text R@1 is {_fmt(diag[0])}%."
    reading += f" Each cell queries {int(queries)} images against every caption"
    cs = analysis.cross_stage
    width = (cs["ci_high"] - cs["ci_low"])[cs["probe"].astype(str) == probe].to_numpy(dtype=float)
    width = width[np.isfinite(width)]
    if width.size and width.max() > 0:  # sampled images: say how far a cell may be from the full gallery's value
        span = f"{width.min():.1f}" if f"{width.min():.1f}" == f"{width.max():.1f}" else f"{width.min():.1f}-{width.max():.1f}"
        reading += f"; their 95% intervals are {span} points wide (every cell's in tables/cross_stage.csv)."
    else:
        reading += " (every image: no sampling error)."
    return stage_heatmaps(
        {"image→text R@1": matrix}, stages, f"r1_heatmap_{probe}", "retrieval",
        f"Cross-stage R@1 (rows: image stage, columns: text stage){_probe_label(probe, n_probes)}", "R@1 (%)", reading,
        limits=(0.0, 100.0),
    )


def chance_r1_pct(text_to_image) -> float | None:
    """Image→text R@1 (%) of a random ranking: an image's captions among all captions, on average 100 / n_images."""
    if text_to_image is None or not len(text_to_image):
        return None
    return 100.0 / len(np.unique(np.asarray(text_to_image)))


def compatibility_reading(diag: np.ndarray, off: np.ndarray, chance_pct: float | None = None) -> str:
    """One sentence on the cross-stage R@1 matrix, whose verdict follows the numbers.

    Compatibility is the share of the weakest within-stage R@1 that survives across stages (at least 95%:
    compatible; at least half: partly; less: not). It cannot be judged when retrieval within a stage is itself
    near chance (below ten times chance, or 5% when chance is unknown): then the sentence says so.
    """
    lo, hi, worst = float(np.nanmin(diag)), float(np.nanmax(diag)), float(np.nanmin(off))
    text = f"Within a stage image→text R@1 ranges {_fmt(lo)}-{_fmt(hi)}%; across stages it is {_fmt(worst)}% at worst"
    floor = 5.0 if chance_pct is None else 10.0 * chance_pct
    if lo < floor:
        chance = "" if chance_pct is None else f" (chance is {chance_pct:.2g}%)"
        return f"{text}. Retrieval within a stage is too weak{chance} to tell whether embeddings of different stages are compatible."
    kept = worst / lo
    verdict = ("so embeddings from different stages remain compatible" if kept >= 0.95 else
               "so old and new embeddings are only partly compatible" if kept >= 0.5 else
               "so old and new embeddings are not compatible: mixing stages loses most of the retrieval")
    return f"{text} ({kept:.0%} of the weakest within-stage value), {verdict}."


def _worst_pair(summary: pd.DataFrame, metric: str, probe: str, higher: bool):
    sel = summary[(summary["metric"] == metric) & (summary["probe"].astype(str) == probe) & summary["modality"].isin(MODALITIES)]
    sel = sel[np.isfinite(sel["value"].astype(float))]
    if not len(sel):
        return None
    row = sel.loc[sel["value"].astype(float).idxmax() if higher else sel["value"].astype(float).idxmin()]
    return float(row["value"]), row["modality"], row["stage_a"], row["stage_b"]


def procrustes_spectra(analysis, probe: str, ref: str, n_probes: int = 1) -> ReportFigure | None:
    """Each rotation plane's angle against the share of the variance it carries (planes in order of angle, each as
    wide as its share), so a large angle in a near-empty plane reads as the narrow sliver it is."""
    spectra = analysis.spectra
    if not len(spectra):
        return None
    sel = spectra[(spectra["probe"].astype(str) == probe) & (spectra["stage_a"].astype(str) == ref)]
    if "centred" in sel.columns and (~sel["centred"].astype(bool)).any():
        sel = sel[~sel["centred"].astype(bool)]
    kinds = [k for k in ("image", "text", "image_vs_text") if k in set(sel["kind"])]
    if not kinds:
        return None
    present = distinct(sel["stage_b"])
    stages = [s for s in stage_order(analysis) if s in present]
    cmap = _cmap(len(stages))
    legend_w = legend_inches([f"{ref} → {stage}" for stage in stages], "stage pair")
    fig = _figure(3.6 * len(kinds) + 1.8, 3.6, {"left": 0.75, "right": legend_w + 0.1, "bottom": 0.55, "top": 0.35, "gap": 0.3,
                                                    "panels": len(kinds)})
    axes = np.atleast_1d(fig.subplots(1, len(kinds), sharey=True))
    labels = {"image": "image: stage a vs stage b", "text": "text: stage a vs stage b", "image_vs_text": "image rotation vs text rotation"}
    for ax, kind in zip(axes, kinds):
        sub = sel[sel["kind"] == kind]
        for i, stage in enumerate(stages):
            s = sub[sub["stage_b"].astype(str) == stage].sort_values("index")
            if not len(s):
                continue
            width = s["variance_share"].to_numpy(dtype=float)
            edges = 100.0 * np.r_[0.0, np.cumsum(width)]
            angles = s["angle_deg"].to_numpy(dtype=float)
            step_line(ax, angles, edges, color=cmap[i], linewidth=1.5, label=f"{ref} → {stage}")
        ax.set_title(labels[kind])
        ax.set_xlabel("share of the variance (%), planes by angle")
        ax.set_xlim(0, 100)
    axes[0].set_ylabel("plane rotation angle (degrees)")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title="stage pair")
    last = stages[-1] if stages else ref
    return ReportFigure(f"procrustes_spectra_{probe}", "rotation", f"Procrustes angle spectra{_probe_label(probe, n_probes)}", fig,
                        _rigid_reading(analysis, sel, probe, ref, last))


def _rigid_reading(analysis, spectra, probe: str, ref: str, last: str) -> str:
    """One sentence per modality: the largest plane, the variance it carries, and whether the change is a rotation."""
    parts, value = [], summary_values(analysis.summary)
    for mod in MODALITIES:
        top = spectra[(spectra["kind"] == mod) & (spectra["stage_b"].astype(str) == last)].sort_values("index")
        share = value("rigid_share", probe, mod, ref, last)
        if not len(top) or not np.isfinite(share):
            continue
        plane, dim, held = top.iloc[0], int(top["dim"].iloc[0]), float(top["variance_held"].iloc[0])
        kind = ("mostly a rotation, which one d x d matrix can undo" if share >= 0.7
                else "mostly a change of shape, which no rotation undoes" if share < 0.4
                else "part rotation, part change of shape")
        parts.append(f"for {mod}, the best rotation from {ref} to {last} (fitted in the {dim} directions holding "
                     f"{100 * held:.0f}% of the variance) turns its largest plane by {_fmt(float(plane['angle_deg']))}°, a plane carrying "
                     f"{100 * float(plane['variance_share']):.0f}% of the variance, and explains {100 * share:.0f}% of the items' "
                     f"movement: {kind}")
    if not parts:
        return "Angle spectra of the Procrustes rotation between stages, each plane as wide as the variance it carries."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + ". Items turn by less than a plane's angle when only part of them lies in that plane."


def topology_lines(analysis, probe: str, ref: str, n_probes: int = 1) -> ReportFigure | None:
    """Mean topology change against the reference stage and between consecutive stages."""
    stages = stage_order(analysis)
    value = summary_values(analysis.summary)
    last = stages[-1] if stages else ref
    vi = value("topology_change_mean_deg", probe, "image", ref, last)
    vt = value("topology_change_mean_deg", probe, "text", ref, last)
    reading = (
        f"The angles between pairs of items change by {_fmt(vi)}° (image) and {_fmt(vt)}° (text) on average "
        f"from {ref} to {last}: this is distortion of the space that a global rotation cannot explain."
    )
    return pair_lines(analysis, probe, ref, "topology_change_mean_deg", key=f"topology_{probe}", section="topology",
                      title=f"Topology change across stages{_probe_label(probe, n_probes)}", unit="mean topology change (degrees)",
                      reading=reading, self_value=0.0)


# --- inter-modal deviation --------------------------------------------------------------------------------
def rotation_scatter(analysis, probe: str, ref: str, last: str, text_to_image: np.ndarray | None, n_probes: int = 1) -> ReportFigure | None:
    """Image rotation vs text rotation per caption; off-diagonal mass is inter-modal deviation."""
    items, col = analysis.items, "rotation_deg"
    if col not in items.columns:
        return None
    sel = items[(items["probe"].astype(str) == probe) & (items["stage_a"].astype(str) == ref) & (items["stage_b"].astype(str) == last)]
    img = sel[sel["modality"] == "image"].sort_values("row")[col].to_numpy(dtype=float)
    txt_frame = sel[sel["modality"] == "text"].sort_values("row")
    txt = txt_frame[col].to_numpy(dtype=float)
    if not len(img) or not len(txt):
        return None
    t2i = np.asarray(text_to_image) if text_to_image is not None else np.arange(len(txt))
    if len(t2i) != len(txt) or t2i.max() >= len(img):
        return None
    x, y = img[t2i], txt
    fig = _figure(5.4, 5.0, {"left": 0.75, "bottom": 0.55, "top": 0.15})
    ax = fig.subplots()
    alpha = float(np.clip(3000.0 / max(len(x), 1) * 0.1, 0.08, 0.7))
    ax.scatter(x, y, s=8, alpha=alpha, color=MODALITY_COLORS["cross"], edgecolors="none", rasterized=len(x) > RASTER_POINTS)
    hi = float(np.nanmax(np.concatenate([x, y]))) * 1.05 if len(x) else 1.0
    ax.plot([0, hi], [0, hi], color="black", linestyle="--", linewidth=1, label="equal rotation")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"image rotation {ref} → {last} (degrees)")
    ax.set_ylabel(f"caption rotation {ref} → {last} (degrees)")
    ax.legend(loc="upper left")
    gap = np.abs(y - x)
    above = float(np.mean(y > x)) * 100
    reading = (
        f"Per caption, image and text rotations differ by {_fmt(float(np.nanmean(gap)))}° on average "
        f"({above:.0f}% of captions rotate more than their image); points off the diagonal are inter-modal deviation."
    )
    return ReportFigure(f"rotation_scatter_{probe}", "intermodal", f"Image vs text rotation per item{_probe_label(probe, n_probes)}", fig, reading)


def _per_stage_rows(analysis, frame: pd.DataFrame, probe: str):
    """Rows of one per-stage table of the analysis (``retrieval``, ``paired``) for one probe set, and the stages present,
    in run order."""
    if not len(frame):
        return None, []
    sel = frame[frame["probe"].astype(str) == probe]
    present = distinct(sel["stage"])
    return sel, [s for s in stage_order(analysis) if s in present]


def paired_angle_plot(analysis, probe: str, n_probes: int = 1) -> ReportFigure | None:
    sel, stages = _per_stage_rows(analysis, analysis.paired, probe)
    if not stages:
        return None
    q = np.array([np.nanpercentile(sel.loc[sel["stage"].astype(str) == s, "paired_angle_deg"].to_numpy(float), [10, 25, 50, 75, 90]) for s in stages])
    x = np.arange(len(stages))
    fig = _figure(7.5, 3.6, {"left": 0.75, "bottom": 0.55, "top": 0.15})
    ax = fig.subplots()
    color = MODALITY_COLORS["cross"]
    ax.fill_between(x, q[:, 0], q[:, 4], color=color, alpha=0.15, label="10-90th percentile")
    ax.fill_between(x, q[:, 1], q[:, 3], color=color, alpha=0.3, label="25-75th percentile")
    ax.plot(x, q[:, 2], marker="o", color=color, label="median")
    ax.set_xticks(x, stages)
    ax.set_xlabel("stage")
    ax.set_ylabel("image-caption angle (degrees)")
    ax.legend()
    delta = q[-1, 2] - q[0, 2]
    reading = (
        f"The median angle between an image and its caption goes from {_fmt(q[0, 2])}° at {stages[0]} to {_fmt(q[-1, 2])}° at {stages[-1]} "
        f"({'+' if delta >= 0 else ''}{_fmt(delta)}°)."
    )
    return ReportFigure(f"paired_angle_{probe}", "intermodal", f"Paired cross-modal angle across stages{_probe_label(probe, n_probes)}", fig, reading)


# --- retrieval -------------------------------------------------------------------------------------------
def retrieval_lines(analysis, probe: str, n_probes: int = 1) -> ReportFigure | None:
    sel, stages = _per_stage_rows(analysis, analysis.retrieval, probe)
    if not stages:
        return None
    value = lookup(sel, ("stage", "direction", "metric"))
    low, high = (lookup(sel, ("stage", "direction", "metric"), f) for f in ("ci_low", "ci_high"))
    widest = 0.0  # the widest 95% interval drawn (sampled queries, fast mode); 0 when every query was ranked
    legend_w = legend_inches(["R@10"])
    fig = _figure(10, 3.6, {"left": 0.75, "right": legend_w + 0.1, "bottom": 0.55, "top": 0.35, "gap": 0.3, "panels": 2})
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(stages))
    names = {"i2t": "image → text", "t2i": "text → image"}
    for ax, direction in zip(axes, ("i2t", "t2i")):
        for metric, color in zip(("R@1", "R@5", "R@10"), color_cycle(3)):
            vals = np.array([value(s, direction, metric) for s in stages])
            ax.plot(x, vals, marker="o", color=color, label=metric)
            lo = np.array([low(s, direction, metric) for s in stages])
            hi = np.array([high(s, direction, metric) for s in stages])
            sampled = np.isfinite(lo) & np.isfinite(hi) & (hi > lo)
            if sampled.any():
                ax.errorbar(x[sampled], vals[sampled], yerr=[vals[sampled] - lo[sampled], hi[sampled] - vals[sampled]], fmt="none",
                            ecolor=color, elinewidth=1.0, capsize=3)
                widest = max(widest, float(np.max(hi[sampled] - lo[sampled])))
        ax.set_title(names[direction])
        ax.set_xticks(x, stages)
        ax.set_xlabel("stage")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("recall (%)")
    # beside the panels, never over a curve
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper right", bbox_to_anchor=(1.0, 1 - 0.35 / 3.6))
    a0, a1 = value(stages[0], "i2t", "R@1"), value(stages[-1], "i2t", "R@1")
    b0, b1 = value(stages[0], "t2i", "R@1"), value(stages[-1], "t2i", "R@1")
    reading = (
        f"Image→text R@1 goes from {_fmt(a0)}% at {stages[0]} to {_fmt(a1)}% at {stages[-1]}, "
        f"text→image R@1 from {_fmt(b0)}% to {_fmt(b1)}%."
    )
    if widest > 0:
        reading += f" Bars: 95% intervals of the sampled queries (at most {widest:.1f} points wide)."
    return ReportFigure(f"retrieval_{probe}", "retrieval", f"Retrieval across stages{_probe_label(probe, n_probes)}", fig, reading)


def flips_bars(analysis, probe: str, n_probes: int = 1) -> ReportFigure | None:
    s = analysis.summary
    stages = stage_order(analysis)
    pairs = [(a, b) for a, b in zip(stages[:-1], stages[1:])]
    have = {(a, b) for a, b in zip(s["stage_a"].astype(str), s["stage_b"].astype(str))}
    value = summary_values(s)
    pairs = [p for p in pairs if p in have and np.isfinite(value("flips_i2t_lost", probe, "cross", *p))]
    if not pairs:
        ref = stages[0]
        pairs = [(ref, b) for b in stages[1:] if np.isfinite(value("flips_i2t_lost", probe, "cross", ref, b))]
    if not pairs:
        return None
    rotate = len(pairs) > 4
    pair_labels = [f"{a} → {b}" for a, b in pairs]
    label_w = text_inches(pair_labels)
    bottom = (0.5 * label_w if rotate else 0.2) + 0.5  # labels turned by 30 degrees reach down half their length
    left = max(1.0, 0.87 * label_w - 0.5) if rotate else 1.0  # ... and left of the first bar by 0.87 of it
    fig = _figure(max(7.5, 1.3 * len(pairs) + 2.5), 3.3 + bottom, {"left": left, "bottom": bottom, "top": 0.45})
    ax = fig.subplots()
    x = np.arange(len(pairs))
    width = 0.38
    colors = {"i2t": MODALITY_COLORS["image"], "t2i": MODALITY_COLORS["text"]}
    totals = {}
    for off, direction in ((-width / 2, "i2t"), (width / 2, "t2i")):
        # flips are shares of the queried items (0-1), as in the registry, the tables, metrics.json and the gate
        gained = np.array([value(f"flips_{direction}_gained", probe, "cross", a, b) for a, b in pairs])
        lost = np.array([value(f"flips_{direction}_lost", probe, "cross", a, b) for a, b in pairs])
        label = "image → text" if direction == "i2t" else "text → image"
        ax.bar(x + off, gained, width, color=colors[direction], label=f"{label}: gained")
        ax.bar(x + off, -lost, width, color=colors[direction], alpha=0.45, hatch="//", label=f"{label}: lost")
        totals[direction] = (gained[-1], lost[-1])
    ax.axhline(0, color="black", linewidth=0.8)
    span = max(0.01, float(np.nanmax(np.abs(ax.get_ylim())))) if np.isfinite(ax.get_ylim()).all() else 0.01
    ax.set_ylim(-span, span)  # symmetric, and at least +-0.01 so "no flips" does not look like noise
    ax.set_xticks(x, pair_labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel("share of items whose top-1 hit flipped\n(gained up, lost down)")
    ax.set_xlabel("stage pair")
    fig.legend(*ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=4, fontsize=8)
    gi, li = totals["i2t"]
    gt, lt = totals["t2i"]
    a, b = pairs[-1]
    reading = (
        f"From {a} to {b}, a share of {_fmt(li, 3)} of images and {_fmt(lt, 3)} of captions lose their top-1 hit while {_fmt(gi, 3)} and "
        f"{_fmt(gt, 3)} gain one: "
        "a steady R@1 can hide many items trading places."
    )
    return ReportFigure(f"flips_{probe}", "retrieval", f"Retrieval flips{_probe_label(probe, n_probes)}", fig, reading)


# --- trajectories -----------------------------------------------------------------------------------------
def trajectories(analysis, probe: str, n_probes: int = 1) -> ReportFigure | None:
    """2-D view of how a few items move from the first stage on, per modality (``RunAnalysis.trajectories``).

    Items sit far apart compared with how far they move, so the view shows each item's displacement from its
    first-stage position (every path starts at the origin), on the two principal directions of all displacements.
    """
    tr = analysis.trajectories
    sel = tr[tr["probe"].astype(str) == probe] if len(tr) else tr
    present = distinct(sel["stage"]) if len(sel) else set()
    stages = [s for s in stage_order(analysis) if s in present]
    mods = [m for m in MODALITIES if (sel["modality"] == m).any()] if len(sel) else []
    if not mods or len(stages) < 2:
        return None
    width = 5.0 * len(mods) + 0.5
    right = legend_inches(distinct(sel["label"]), "item", 8.0) + 0.1
    fig = _figure(width, 4.8, {"left": 0.8, "right": right, "bottom": 0.55, "top": 0.35, "gap": 1.0, "panels": len(mods)})
    axes = np.atleast_1d(fig.subplots(1, len(mods)))
    spans = []
    for ax, mod in zip(axes, mods):
        sub = sel[sel["modality"] == mod]
        items = sorted(set(sub["item"].astype(int)))
        colors = color_cycle(len(items))
        for i, item in enumerate(items):
            path = sub[sub["item"] == item].set_index("stage").reindex(stages)
            xy = path[["x", "y"]].to_numpy(dtype=float)
            ax.plot(xy[:, 0], xy[:, 1], color=colors[i], linewidth=1.4, marker=".", markersize=5, label=str(path["label"].iloc[0]))
            ax.annotate("", xy=xy[-1], xytext=xy[-2], arrowprops={"arrowstyle": "->", "color": colors[i], "lw": 1.6})
        ax.scatter([0], [0], color="black", marker="o", s=25, zorder=3)
        ax.set_aspect("equal", adjustable="datalim")
        ax.locator_params(nbins=5)  # equal aspect can leave a panel narrow: its default ticks would run into each other
        spans.append((mod, float(np.nanmean(sub["step_deg"].to_numpy(dtype=float)))))
        explained = float(sub["explained_pct"].iloc[0])
        ax.set_title(f"{mod} embeddings ({explained:.0f}% of the movement shown)")
        ax.set_xlabel("displacement, PC 1 (cosine units)")
        ax.set_ylabel("displacement, PC 2 (cosine units)")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title="item", fontsize=8)
    reading = (
        f"{len(set(sel['item']))} items followed from {stages[0]} (black dot) to {stages[-1]} (arrow heads), one point per stage; each step between "
        "stages moves an item by " + " and ".join(f"{v:.1f}° ({m})" for m, v in spans) + " on average."
    )
    return ReportFigure(f"trajectories_{probe}", "rotation", f"Trajectories of a few items (PCA of displacements){_probe_label(probe, n_probes)}",
                        fig, reading)


def figure_formats(png: bool = False) -> tuple[str, ...]:
    """What every figure is encoded as: SVG, embedded in the page (text stays text, and no glyph is rasterised, so it
    is cheaper to draw than a PNG), and PNG besides when asked."""
    return ("svg", "png") if png else ("svg",)


def render_figure(fig: ReportFigure, formats=("svg",)) -> dict[str, bytes]:
    """Render a figure to bytes in each of ``formats`` (figure_formats; the caller writes them atomically)."""
    import io

    out = {}
    with report_style():
        for fmt in formats:
            buf = io.BytesIO()
            fig.figure.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
            out[fmt] = buf.getvalue()
    return out
