"""Analyse a run and build its report in one go, drawing each probe set's figures while the next set is analysed.

At the scale of a quick run (hundreds of images per probe set) the analysis keeps one core busy: its products are too
small for a second BLAS thread to help (the quickstart's analysis takes as long on one BLAS thread as on two).
Drawing is the report's whole cost, so with several such probe sets the run is analysed set by set
(``analyze_run(run, probes=[p])``, on one BLAS thread, which must not compete with the drawing workers: spinning
BLAS threads on busy cores made the analysis twice as slow) and each finished set's figures are drawn by forked
workers (render.FigureDrawer) on the cores the analysis leaves idle. Larger sets, whose products do use every core,
are analysed first and drawn after, as ``make_report`` does. ``RunAnalysis.combine`` joins the sets' analyses into
the analysis ``analyze_run`` gives over all of them (tests/test_pipeline.py checks table for table), so the report is
the one ``make_report`` writes from that analysis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from threadpoolctl import threadpool_limits

from .analysis import RunAnalysis, analyze_run
from .report import Report, make_report, render
from .report.figures import figure_formats

# Sets are analysed while figures are drawn only when each holds at most this many caption values (captions x d): the
# quickstart's sets hold 1,200 x 64; a COCO-test set (25,000 x 512) keeps both cores busy on its own.
PIPELINE_MAX_VALUES = 1_000_000


@dataclass
class AnalysedRun:
    """An analysis, its report, and where the time went."""

    analysis: RunAnalysis
    report: Report
    analysis_s: float  # until the last probe set was analysed (earlier sets' figures were drawn meanwhile)
    report_s: float  # the rest: the last set's figures, the tables, metrics.json and the page


def analyze_and_report(run, *, probes=None, png: bool = False, progress: bool = False, all_items: bool = False,
                       workers: int | None = None, **analysis_options) -> AnalysedRun:
    """``analyze_run(run, probes=probes, **analysis_options)`` and ``make_report`` of it, with the report's figures drawn
    while the analysis runs when there are several probe sets and workers to draw in (render.FigureDrawer)."""
    names = list(run.probes) if probes is None else list(probes)
    t0 = time.perf_counter()
    small = all(p in run.probes and run.probes[p].n_texts * run.dimension <= PIPELINE_MAX_VALUES for p in names)
    try:  # the default pairs (every stage against ref, and consecutive stages) use every stage: the last is the run's
        ref = run.stage_name(analysis_options.get("ref", 0))
    except (KeyError, TypeError, ValueError, IndexError):
        ref = None  # analyze_run says what is wrong with it
    if ref is None or len(names) < 2 or not small or "pairs" in analysis_options or render.resolve_workers(workers) < 2:
        analysis = analyze_run(run, probes=names, progress=progress, **analysis_options)
        t1 = time.perf_counter()
        report = make_report(analysis, run, png=png, progress=progress, all_items=all_items, workers=workers)
        return AnalysedRun(analysis, report, t1 - t0, time.perf_counter() - t1)
    last = run.stages[-1]
    with render.FigureDrawer(ref, last, len(names), figure_formats(png), workers, progress).start() as drawer:
        parts = []
        for i, name in enumerate(names):
            with threadpool_limits(limits=1):
                part = analyze_run(run, probes=[name], progress=progress, **analysis_options)
            parts.append(part)
            drawer.add(part, more=i < len(names) - 1)
        analysis = RunAnalysis.combine(parts)
        t1 = time.perf_counter()
        report = make_report(analysis, run, png=png, progress=progress, all_items=all_items, drawer=drawer)
    return AnalysedRun(analysis, report, t1 - t0, time.perf_counter() - t1)
