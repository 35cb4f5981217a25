"""Assemble the report of one analysis: figures, tables, readings, metrics.json and the HTML page.

The report computes nothing: every number it draws or prints comes from the ``RunAnalysis`` (and is in
metrics.json); the run is read only for its metadata and probe sizes. Which metrics a section defines, and
which are headline numbers, is read from the metric registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from ..metrics.registry import section_metrics
from . import figures as F
from . import render
from . import upgrade as U
from .html import Section, kv_table, page, table_html
from .metrics_json import dumps, metrics_document
from .output import report_files, write_folder
from .tables import csv_tables, definitions, format_headline, headline

SECTION_TITLES = {
    "retrieval": ("Retrieval", "Cross-modal retrieval at every stage, across stages, and the items whose top-1 hit flipped."),
    "rotation": ("Intra-modal rotation", "How far each modality's embeddings turn between stages, item by item and as a whole."),
    "topology": ("Topology", "How the angles between items change, beyond what one rotation of the whole space explains."),
    "neighbours": ("Neighbour drift", "How many of an item's nearest neighbours it keeps from one stage to another."),
    "intermodal": ("Inter-modal deviation", "Whether images and captions move together, which is what cross-modal alignment needs."),
    "upgrade": ("Upgrade without re-indexing", "Whether the new model can keep the old vector index: new queries against the old "
                "index with no map (cross) and with the old index carried over by a fitted d x d bridge, against full "
                "re-embedding, on held-out items (docs/bridge.md)."),
}

# Shown under the headline table: why the two rotation figures differ, so neither seems to contradict the other.
ROTATION_NOTE = (
    "<p class='note'>Two rotation figures answer two questions. <code>rotation_mean_deg</code> is how far the items moved, "
    "on average. <code>procrustes_angle_deg</code> is how far the best rigid rotation turns its planes, fitted where the "
    "data live (the rotation section gives the dimension and each plane's share of the variance); it adds the planes' "
    "angles in quadrature, so many planes turned a little, or one thin plane turned a lot, can read larger than any item "
    "moved. <code>rigid_share</code> says how much of the items' movement that rotation explains: near 1, one d x d "
    "matrix undoes the change and the rotation figures describe it; near 0, the cloud changed shape and the best rotation "
    "is only the closest fit to a non-rigid change.</p>"
)


@dataclass
class Report:
    """Everything a report folder holds, in memory; ``write`` puts it on disk atomically."""

    title: str
    html: str
    metrics: dict
    tables: dict[str, pd.DataFrame]
    figures: list = field(default_factory=list)  # [ReportFigure]
    rendered: dict = field(default_factory=dict)  # key -> {"svg": bytes, "png": bytes (on request)}
    summary_text: str = ""
    # tables/*.csv and metrics.json as encoded by make_report (while the figures were drawn); empty it to re-encode
    # after editing ``tables`` or ``metrics``
    encoded: dict = field(default_factory=dict, repr=False)

    def files(self) -> dict[str, bytes]:
        if self.encoded:
            return {**report_files(self.html, {}, self.rendered), **self.encoded}
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


def _ref(analysis, stages: list[str], ref=None) -> str:
    """The reference stage: ``ref`` (a name or an index into the analysed stages), else the analysis' own."""
    if ref is None:
        return analysis.ref
    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool) and -len(stages) <= ref < len(stages):
        return stages[int(ref)]
    return str(ref)


def _overview(analysis, run, stages, probes, ref) -> str:
    meta = analysis.meta
    md = dict(run.metadata) if run is not None else {}
    pairs = [("run", str(run.path) if run is not None else meta.get("run") or "(arrays)")]
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
        html += "<div class='licence'>" + "".join(f"<p><b>{escape(k.title())}</b>: {escape(str(v))}</p>" for k, v in credit) + "</div>"
    return html


def _section_table(analysis, metrics: list[str], ref: str, last: str) -> pd.DataFrame:
    s = analysis.summary
    sel = s[s["metric"].isin(metrics) & (s["stage_a"].astype(str) == ref) & (s["stage_b"].astype(str) == last)]
    if not len(sel):
        return pd.DataFrame()
    wide = sel.pivot_table(index=["probe", "metric"], columns="modality", values="value", aggfunc="first", sort=False).reset_index()
    return wide


def make_report(analysis, run=None, *, ref=None, title: str | None = None, flips: bool = True, png: bool = False,
                progress: bool = False, all_items: bool = False, workers: int | None = None,
                drawer: render.FigureDrawer | None = None) -> Report:
    """Build the report of ``analysis``; ``run`` (optional) adds its metadata and probe sizes to the overview.

    ``ref`` is the reference stage (name or index into the analysed stages); by default the analysis' own.
    Figures are rendered once as SVG (embedded in the page and written under figures/); ``png`` also writes PNG.
    ``tables/items.csv`` and ``tables/paired.csv`` hold the report's pair (``ref`` -> last stage) only, or every
    analysed pair and stage with ``all_items`` (tables.csv_tables). ``workers``: processes the figures are drawn in
    (default: the usable cores on Linux; 1 draws them here; report/render.py). ``drawer``: a ``render.FigureDrawer``
    that already holds the analysis' figures, queued set by set while it was computed (spatial_disorder/pipeline.py); it must have been
    made with this report's reference stage, last stage and formats.
    """
    stages = analysis.stages
    probes = analysis.probe_names
    ref = _ref(analysis, stages, ref)
    last = stages[-1] if stages else ref
    formats = F.figure_formats(png)
    if drawer is None:
        drawer = render.FigureDrawer(ref, last, len(probes), formats, workers, progress)
        drawer.add(analysis)
    elif (drawer.ref, drawer.last, drawer.formats, drawer.n_probes) != (ref, last, formats, len(probes)):
        drawer.close()
        raise ValueError(f"the drawer was made for stages {drawer.ref} -> {drawer.last}, formats {drawer.formats} and "
                         f"{drawer.n_probes} probe sets, not {ref} -> {last}, {formats} and {len(probes)}")

    def meanwhile():  # everything but the figures, built while they are drawn
        tables, doc = csv_tables(analysis, ref, last, all_items), metrics_document(analysis, run_info(run))
        encoded = {k: v for k, v in report_files("", tables, {}, {"metrics.json": dumps(doc)}).items() if k != "index.html"}
        return tables, doc, encoded, _page_parts(analysis, run, stages, probes, ref, last, flips)

    figs, rendered, (tables, doc, encoded, (sections, overview, head)) = drawer.finish(meanwhile=meanwhile)
    for sec in sections:
        sec.figures = [(f, rendered[f.key]["svg"]) for f in figs if f.section == sec.anchor]
    name = Path(str(run.path)).name if run is not None else "embedding arrays"
    title = title or f"Spatial-disorder report: {name}"
    from .._version import __version__

    saved = "SVG and PNG" if png else "SVG (PNG with --png)"
    html = page(title, overview, sections, footer=f"Written by spatial-disorder {__version__}. Figures are also saved as {saved} under figures/.")
    return Report(title, html, doc, tables, figs, rendered, format_headline(head, ref, last), encoded)


def _page_parts(analysis, run, stages, probes, ref, last, flips: bool) -> tuple[list, str, pd.DataFrame]:
    """The page without its figures: the sections with their tables and definitions (figures added once drawn), the
    overview with the headline table, and the headline."""
    names = list(dict.fromkeys(analysis.summary["metric"])) if len(analysis.summary) else []
    sections, shown = [], set()
    for key in F.SECTIONS:
        heading, intro = SECTION_TITLES[key]
        metrics = [m for m in section_metrics(key) if m in names]
        shown.update(metrics)
        sec = Section(key, heading, intro, [])
        if key == "upgrade":
            for probe in probes:
                bridge_table = U.upgrade_table(analysis, probe, ref, last)
                if len(bridge_table):
                    sec.tables.append((f"Held-out retrieval, stage {ref} → {last}{F._probe_label(probe, len(probes))}: "
                                       + U.upgrade_reading(bridge_table), bridge_table))
        table = _section_table(analysis, [m for m in metrics if not (key == "upgrade" and U.in_table(m))], ref, last)
        if len(table):
            sec.tables.append((f"Values, stage {ref} → {last}", table))
        sec.definitions = definitions(metrics) if metrics else None
        sections.append(sec)
    if flips and len(stages) > 1:
        for probe in probes:
            fl = analysis.flipped_items(probe, ref, last)
            lost = fl[(fl["change"] == "lost") & (fl["direction"] == "t2i")]
            if len(lost):
                shown_rows = lost.head(20)
                sections[0].tables.append(
                    (f"Captions whose text → image top-1 hit was lost, {ref} → {last} ({probe}; "
                     f"{'first 20 of ' if len(lost) > 20 else ''}{len(lost)})", shown_rows[["row", "id", "caption", "rank_a", "rank_b"]]))
    other = [m for m in names if m not in shown]
    if other:
        sections.append(Section("other", "Other metrics", "Metrics computed by the analyzers that no section above plots.",
                                tables=[(f"Values, stage {ref} → {last}", _section_table(analysis, other, ref, last))],
                                definitions=definitions(other)))
    overview = _overview(analysis, run, stages, probes, ref)
    head = headline(analysis, ref, last)
    if len(head):
        overview += f"<h3>Headline, stage {escape(str(ref))} → {escape(str(last))}</h3>" + table_html(head)
        if {"rotation_mean_deg", "procrustes_angle_deg"} <= set(head["metric"]):
            overview += ROTATION_NOTE
    return sections, overview, head
