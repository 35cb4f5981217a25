"""The `sd-analyze` report: figures, tables, metrics.json and one self-contained HTML page.

>>> analysis = analyze_run(run)
>>> report = make_report(analysis, run)
>>> report.write("runs/demo/report")       # index.html, metrics.json, tables/*.csv, figures/*.svg (and *.png with png=True)
"""

from __future__ import annotations

from .build import Report, make_report, run_info
from .compare import CompareReport, compare_runs
from .output import write_folder

__all__ = ["CompareReport", "Report", "compare_runs", "make_report", "run_info", "write_folder"]
