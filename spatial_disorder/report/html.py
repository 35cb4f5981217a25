"""One self-contained HTML page (inline CSS, figures as base64 SVG images; no scripts, no network).

Everything that comes from data (names, captions, metadata values) goes through ``html.escape``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape

import numpy as np
import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1a1a1a;background:#fff;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:1.2em 1.6em 4em}
h1{font-size:1.6em;margin:.4em 0 .2em} h2{font-size:1.3em;margin-top:2em;border-bottom:2px solid #0072B2;padding-bottom:.2em}
h3{font-size:1.05em;margin:1.4em 0 .4em}
nav{font-size:.92em;margin:.6em 0 1em} nav a{margin-right:1em;color:#0072B2}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.88em}
th,td{border:1px solid #d0d0d0;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0 1.6em} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.95em;margin-top:.3em} figcaption b{display:block}
.reading{background:#f4f8fb;border-left:4px solid #56B4E9;padding:.4em .7em;margin:.3em 0}
.note{color:#555;font-size:.9em} .licence{background:#fff8e6;border-left:4px solid #E69F00;padding:.5em .8em}
details{margin:.6em 0} summary{cursor:pointer;color:#0072B2}
code{font-size:.92em}
"""


@dataclass
class Section:
    """A titled part of the page: an introduction, figures with their readings, tables, definitions."""

    anchor: str
    title: str
    intro: str = ""
    figures: list = field(default_factory=list)  # [(ReportFigure, svg bytes)]
    tables: list = field(default_factory=list)  # [(heading, DataFrame)]
    definitions: pd.DataFrame | None = None
    raw_html: str = ""  # already-escaped extra content


def table_html(frame: pd.DataFrame, max_rows: int = 200, digits: int = 4) -> str:
    """A DataFrame as an escaped HTML table (numbers right-aligned, NaN as a dash)."""
    if frame is None or not len(frame):
        return "<p class='note'>(empty)</p>"
    frame = frame.head(max_rows)
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for rec in frame.itertuples(index=False):
        cells = []
        for v in rec:
            if isinstance(v, (float, np.floating)):
                text = "–" if not np.isfinite(v) else f"{float(v):.{digits}g}"
                cells.append(f"<td class='num'>{escape(text)}</td>")
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                cells.append(f"<td class='num'>{int(v)}</td>")
            else:
                cells.append(f"<td>{escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def kv_table(pairs) -> str:
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in pairs)
    return f"<table>{rows}</table>"


def figure_html(fig, svg: bytes) -> str:
    """A figure as an ``<img>`` of its SVG: a document of its own, so no two figures' ids can clash, and no script in
    an image runs."""
    data = base64.b64encode(svg).decode("ascii")
    return (
        f"<figure id='fig-{escape(fig.key)}'><img alt='{escape(fig.title, quote=True)}' src='data:image/svg+xml;base64,{data}'>"
        f"<figcaption><b>{escape(fig.title)}</b><div class='reading'>{escape(fig.reading)}</div></figcaption></figure>"
    )


def section_html(section: Section) -> str:
    parts = [f"<section id='{escape(section.anchor)}'><h2>{escape(section.title)}</h2>"]
    if section.intro:
        parts.append(f"<p>{escape(section.intro)}</p>")
    for fig, svg in section.figures:
        parts.append(figure_html(fig, svg))
    if not section.figures and not section.tables and not section.raw_html:
        parts.append("<p class='note'>No figure: the analysis holds no values for this section.</p>")
    for heading, frame in section.tables:
        parts.append(f"<h3>{escape(heading)}</h3>{table_html(frame)}")
    parts.append(section.raw_html)
    if section.definitions is not None and len(section.definitions):
        parts.append(f"<details open><summary>Metric definitions</summary>{table_html(section.definitions)}</details>")
    parts.append("</section>")
    return "".join(parts)


def page(title: str, overview_html: str, sections: list[Section], footer: str = "") -> str:
    """The whole page; ``overview_html`` must already be escaped (build it with ``kv_table``/``table_html``)."""
    nav = "".join(f"<a href='#{escape(s.anchor)}'>{escape(s.title)}</a>" for s in sections)
    body = "".join(section_html(s) for s in sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{escape(title)}</h1><nav><a href='#overview'>Overview</a>{nav}</nav>"
        f"<section id='overview'><h2>Overview</h2>{overview_html}</section>{body}"
        f"<footer class='note'><hr>{escape(footer)}</footer></main></body></html>\n"
    )
