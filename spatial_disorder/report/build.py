"""Assemble the report of one analysis: figures, tables, readings, metrics.json and the HTML page."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import figures as F
from .html import Section, kv_table, page, table_html
from .metrics_json import dumps, metrics_document
from .output import report_files, write_folder
from .style import report_style
from .tables import csv_tables, definitions, format_headline, headline

# Which metrics each section defines (metrics not listed here appear under "Other metrics").
SECTION_METRICS = {
    "retrieval": ["i2t_R@1_delta", "t2i_R@1_delta", "rsum_delta", "flips_i2t_lost", "flips_i2t_gained", "flips_t2i_lost", "flips_t2i_gained"],
    "rotation": [
        "rotation_mean_deg", "rotation_median_deg", "rotation_p10_deg", "rotation_p90_deg", "procrustes_angle_deg",
        "procrustes_max_angle_deg", "procrustes_residual_frac", "procrustes_centred_angle_deg", "procrustes_centred_residual_frac",
    ],
    "topology": ["topology_change_mean_deg", "topology_pairs"],
    "neighbours": ["knn_overlap_mean", "knn_overlap_ci_low", "knn_overlap_ci_high"],
    "intermodal": [
        "paired_angle_change_mean_deg", "paired_angle_abs_change_mean_deg", "rotation_mismatch_mean_deg", "intermodal_rotation_deg",
        "intermodal_rotation_max_deg", "modality_gap_a", "modality_gap_b", "modality_gap_change", "contrastive_kl", "contrastive_kl_i2t",
        "contrastive_kl_t2i",
    ],
}
SECTION_TITLES = {
    "retrieval": ("Retrieval", "Cross-modal retrieval at every stage, across stages, and the items whose top-1 hit flipped."),
    "rotation": ("Intra-modal rotation", "How far each modality's embeddings turn between stages, item by item and as a whole."),
    "topology": ("Topology", "How the angles between items change, beyond what one rotation of the whole space explains."),
    "neighbours": ("Neighbour drift", "How many of an item's nearest neighbours it keeps from one stage to another."),
    "intermodal": ("Inter-modal deviation", "Whether images and captions move together, which is what cross-modal alignment needs."),
}
N_TRAJECTORY_ITEMS = 6


@dataclass
class Report:
    """Everything a report folder holds, in memory; ``write`` puts it on disk atomically."""

    title: str
    html: str
    metrics: dict
    tables: dict[str, pd.DataFrame]
    figures: list = field(default_factory=list)  # [ReportFigure]
    rendered: dict = field(default_factory=dict)  # key -> {"png": bytes, "svg": bytes}
    summary_text: str = ""

    def files(self) -> dict[str, bytes]:
        return report_files(self.html, self.tables, self.rendered, {"metrics.json": dumps(self.metrics)})

    def write(self, out) -> Path:
        """Write the report folder (replacing an older report there) and return its path."""
        return write_folder(out, self.files())


def run_info(run) -> dict:
    """The run description stored in metrics.json and shown in the overview."""
    if run is None:
        return {}
    return {
        "path": str(run.path),
        "stages": list(run.stages),
        "probes": {n: {"n_images": p.n_images, "n_texts": p.n_texts} for n, p in run.probes.items()},
        "metadata": dict(run.metadata),
    }


def _probes(analysis) -> list[str]:
    meta = getattr(analysis, "meta", {}) or {}
    if meta.get("probes"):
        return [str(p) for p in meta["probes"]]
    names: list[str] = []
    for frame in (analysis.summary, analysis.retrieval):
        if frame is not None and len(frame):
            names += [str(p) for p in frame["probe"] if str(p) not in names]
    return list(dict.fromkeys(names))


def _ref(analysis, stages: list[str], ref=None) -> str:
    meta = getattr(analysis, "meta", {}) or {}
    ref = meta.get("ref") if ref is None else ref
    if ref is None:
        starts = [str(p[0]) for p in meta.get("pairs", [])]
        return max(stages, key=lambda s: (starts.count(s), -stages.index(s))) if starts else stages[0]
    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool) and -len(stages) <= ref < len(stages):
        return stages[int(ref)]
    return str(ref)


def build_figures(analysis, run=None, ref=None, backend=None, cross_stage: bool = True, progress: bool = False) -> list:
    """Every figure of the report, in page order within each section."""
    stages = F.stage_order(analysis)
    probes = _probes(analysis)
    ref = _ref(analysis, stages, ref)
    last = stages[-1] if stages else ref
    n = len(probes)
    out = []
    with report_style():
        for probe in _progress(probes, "figures", progress):
            t2i = run.probes[probe].text_to_image if run is not None and probe in run.probes else _meta_t2i(analysis)
            r1 = None
            if run is not None and cross_stage and probe in run.probes and 1 < len(stages) <= 16:
                from .cross_stage import cross_stage_r1

                r1 = cross_stage_r1(run, probe, stages, backend=backend)
            traj = _trajectory_data(run, probe, stages) if run is not None and probe in run.probes else None
            out += [
                F.retrieval_lines(analysis, probe, n),
                F.r1_heatmap(r1, stages, probe, n, chance_pct=F.chance_r1_pct(t2i)),
                F.flips_bars(analysis, probe, n),
                F.rotation_histograms(analysis, probe, ref, n),
                F.rotation_heatmap(analysis, probe, n),
                F.procrustes_spectra(analysis, probe, ref, n),
                F.trajectories(traj[0], stages, traj[1], probe, n) if traj else None,
                F.topology_lines(analysis, probe, ref, n),
                F.overlap_heatmap(analysis, probe, n),
                F.rotation_scatter(analysis, probe, ref, last, t2i, n),
                F.paired_angle_plot(analysis, probe, n),
            ]
    return [f for f in out if f is not None]


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


def _meta_t2i(analysis):
    meta = getattr(analysis, "meta", {}) or {}
    t2i = meta.get("text_to_image")
    return None if t2i is None else np.asarray(t2i)


def _trajectory_data(run, probe: str, stages: list[str]):
    """A few evenly spaced images and their first captions, at every stage."""
    p = run.probes[probe]
    rows = np.unique(np.linspace(0, p.n_images - 1, min(N_TRAJECTORY_ITEMS, p.n_images)).round().astype(int))
    first = {}
    for j, i in enumerate(p.text_to_image):
        first.setdefault(int(i), j)
    text_rows = np.array([first[int(r)] for r in rows])
    labels = [str(x)[:18] for x in p.images["id"].astype(str).to_numpy()[rows]]
    emb = {
        "image": [np.asarray(run.embeddings(s, probe, "image")[rows]) for s in stages],
        "text": [np.asarray(run.embeddings(s, probe, "text")[text_rows]) for s in stages],
    }
    return emb, labels


def _overview(analysis, run, stages, probes, ref) -> str:
    meta = getattr(analysis, "meta", {}) or {}
    md = dict(run.metadata) if run is not None else dict(meta.get("metadata", {}) or {})
    pairs = [("run", str(run.path) if run is not None else meta.get("run", "(arrays)"))]
    pairs.append(("stages", f"{len(stages)}: {', '.join(stages)}"))
    if run is not None:
        pairs.append(("probe sets", "; ".join(f"{n} ({p.n_images} images, {p.n_texts} captions)" for n, p in run.probes.items())))
    else:
        pairs.append(("probe sets", ", ".join(probes)))
    for key in ("mode", "model", "pretrained", "dataset", "seed"):
        if key in md:
            pairs.append((key, md[key]))
    pairs.append(("reference stage", ref))
    for key in ("backend", "k", "fast", "seed"):
        if key in meta:
            pairs.append((f"analysis {key}", meta[key]))
    html = kv_table(pairs)
    others = [(k, v) for k, v in md.items() if k not in ("mode", "model", "pretrained", "dataset", "seed", "attribution", "license", "licence")]
    if others:
        html += "<details><summary>All run metadata</summary>" + kv_table(others) + "</details>"
    credit = [(k, md[k]) for k in ("attribution", "license", "licence") if md.get(k)]
    if credit:
        from html import escape

        html += "<div class='licence'>" + "".join(f"<p><b>{escape(k.title())}</b>: {escape(str(v))}</p>" for k, v in credit) + "</div>"
    return html


def _section_table(analysis, metrics: list[str], ref: str, last: str) -> pd.DataFrame:
    s = analysis.summary
    sel = s[s["metric"].isin(metrics) & (s["stage_a"].astype(str) == ref) & (s["stage_b"].astype(str) == last)]
    if not len(sel):
        return pd.DataFrame()
    wide = sel.pivot_table(index=["probe", "metric"], columns="modality", values="value", aggfunc="first", sort=False).reset_index()
    return wide


def make_report(analysis, run=None, *, ref=None, title: str | None = None, backend=None, cross_stage: bool = True, flips: bool = True,
                progress: bool = False) -> Report:
    """Build the report of ``analysis`` (``run`` adds cross-stage retrieval, trajectories and captions of flipped items).

    ``ref`` is the reference stage (name or index into the analysed stages); by default the stage most pairs start from.
    """
    stages = F.stage_order(analysis)
    probes = _probes(analysis)
    ref = _ref(analysis, stages, ref)
    last = stages[-1] if stages else ref
    figs = build_figures(analysis, run, ref=ref, backend=backend, cross_stage=cross_stage, progress=progress)
    rendered = {f.key: F.render_figure(f) for f in figs}
    for f in figs:  # free the figure memory once rendered
        f.figure.clear()

    names = list(dict.fromkeys(analysis.summary["metric"])) if len(analysis.summary) else []
    sections = []
    for key in F.SECTIONS:
        heading, intro = SECTION_TITLES[key]
        metrics = [m for m in SECTION_METRICS[key] if m in names]
        sec = Section(key, heading, intro, [(f, rendered[f.key]["png"]) for f in figs if f.section == key])
        table = _section_table(analysis, metrics, ref, last)
        if len(table):
            sec.tables.append((f"Values, stage {ref} → {last}", table))
        sec.definitions = definitions(metrics) if metrics else None
        sections.append(sec)
    if run is not None and flips and len(stages) > 1:
        from .flips import flipped_items

        retrieval = sections[0]
        for probe in probes:
            if probe in run.probes:
                fl = flipped_items(run, probe, ref, last, backend=backend)
                lost = fl[(fl["change"] == "lost") & (fl["direction"] == "t2i")]
                if len(lost):  # no table announcing "first 20 of 0"
                    retrieval.tables.append(
                        (f"Captions whose text → image top-1 hit was lost, {ref} → {last} ({probe}; "
                         f"{'first 20 of ' if len(lost) > 20 else ''}{len(lost)})", lost.head(20)[["row", "id", "caption", "rank_a", "rank_b"]])
                    )
    other = [m for m in names if not any(m in v for v in SECTION_METRICS.values())]
    if other:
        sections.append(Section("other", "Other metrics", "Metrics computed by the analyzers that no section above plots.",
                                tables=[(f"Values, stage {ref} → {last}", _section_table(analysis, other, ref, last))],
                                definitions=definitions(other)))
    name = Path(str(run.path)).name if run is not None else "embedding arrays"
    title = title or f"Spatial-disorder report: {name}"
    overview = _overview(analysis, run, stages, probes, ref)
    head = headline(analysis, ref, last)
    if len(head):
        overview += f"<h3>Headline, stage {ref} → {last}</h3>" + table_html(head)
    from .._version import __version__

    html = page(title, overview, sections, footer=f"Written by spatial-disorder {__version__}. Figures are also saved as PNG and SVG under figures/.")
    doc = metrics_document(analysis, run_info(run))
    return Report(title, html, doc, csv_tables(analysis), figs, rendered, format_headline(head, ref, last))
