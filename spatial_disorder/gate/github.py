"""GitHub Actions output: workflow-command annotations and a Markdown job summary."""

from __future__ import annotations

import math
from html import escape

from .evaluate import CheckResult, counts


def escape_data(text: str) -> str:
    """Escape the message of a workflow command (GitHub: % -> %25, CR -> %0D, LF -> %0A)."""
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow-command property value (also ':' -> %3A and ',' -> %2C)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(results: list[CheckResult], file: str | None = None) -> list[str]:
    """``::error``/``::warning`` lines for failed and warned checks (passes produce none)."""
    lines = []
    for r in results:
        if r.status == "pass":
            continue
        kind = "error" if r.status == "fail" else "warning"
        props = [f"title={escape_property(f'sd-analyze check: {r.check.label} [{r.where}]')}"]
        if file:
            props.insert(0, f"file={escape_property(file)}")
        lines.append(f"::{kind} {','.join(props)}::{escape_data(r.line())}")
    return lines


def _cell(text) -> str:
    return escape(str(text)).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_summary(results: list[CheckResult], title: str = "Spatial-disorder gate") -> str:
    """A Markdown section for ``$GITHUB_STEP_SUMMARY`` (data is HTML-escaped and pipe-escaped)."""
    c = counts(results)
    verdict = "❌ failed" if c["fail"] else ("⚠️ passed with warnings" if c["warn"] else "✅ passed")
    lines = [f"### {_cell(title)}: {verdict}", "", f"{c['pass']} passed, {c['warn']} warnings, {c['fail']} failed.", "",
             "| status | check | probe | modality | value | bounds | severity |", "|---|---|---|---|---|---|---|"]
    for r in results:
        v = "n/a" if r.value is None or not math.isfinite(r.value) else f"{r.value:.4g}"
        lines.append(f"| {r.status} | {_cell(r.check.label)} | {_cell(r.probe)} | {_cell(r.modality)} | {v} | {_cell(r.check.bounds_text())} | {r.check.severity} |")
    return "\n".join(lines) + "\n\n"
