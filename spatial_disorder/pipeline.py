"""Analyse a run and build its report in one go, with the report's worker processes analysing probe sets too.

At the scale of a quick run (hundreds of images per probe set) an analysis keeps one core busy: its products are too
small for a second BLAS thread to help (the quickstart's analysis takes as long on one BLAS thread as on two), and
drawing the figures costs more CPU than the analysis. So with several such probe sets the drawing workers
(render.FigureDrawer) are started first, with matplotlib already loaded for them to inherit, and the run is analysed
set by set (``analyze_run(run, probes=[p])``, one BLAS thread each: spinning BLAS threads on busy cores made the
analysis twice as slow; ``analyze_run`` limits itself to one for such sets, ``analysis.SMALL_SET_VALUES``): the first
set here, the last in a process forked before matplotlib is loaded (``_EarlySet``: loading it keeps one core busy for
most of a second, and the other would idle), the others in the workers. While this process waits for a worker's set it
draws the finished sets' figures that no worker has started (``FigureDrawer.draw_until``), and a set no worker has
started yet it analyses itself, so no core waits while there is work. A set a worker fails on (or dies on) is analysed
here again, where its error, if it has one, is raised with its one-line message. Larger sets, whose products do use
every core, are analysed first and drawn after, as ``make_report`` does. ``RunAnalysis.combine`` joins the sets'
analyses into the analysis ``analyze_run`` gives over all of them (tests/test_pipeline.py checks table for table), so
the report is the one ``make_report`` writes from that analysis.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from .analysis import SMALL_SET_VALUES, RunAnalysis, analyze_run, probe_values
from .report import Report, make_report, render
from .report.figures import figure_formats

# The run and the analysis options, set while the drawing workers are forked so that they can analyse probe sets too.
_FORKED: dict = {}


@dataclass
class AnalysedRun:
    """An analysis, its report, and where the time went."""

    analysis: RunAnalysis
    report: Report
    analysis_s: float  # until every probe set was analysed (some figures may have been drawn meanwhile)
    report_s: float  # the rest: the figures still to draw, the tables, metrics.json and the page


def analyze_and_report(run, *, probes=None, png: bool = False, progress: bool = False, all_items: bool = False,
                       workers: int | None = None, **analysis_options) -> AnalysedRun:
    """``analyze_run(run, probes=probes, **analysis_options)`` and ``make_report`` of it, with the report's figures drawn
    while the analysis runs when there are several probe sets and workers to draw in (render.FigureDrawer)."""
    names = list(run.probes) if probes is None else list(probes)
    t0 = time.perf_counter()
    # sets are analysed one by one, in the drawing workers too, only when each is small enough for one thread
    # (analysis.SMALL_SET_VALUES: the quickstart's sets hold 1,200 captions x 64); a COCO-test set keeps both cores busy
    small = all(p in run.probes and probe_values(run, p) <= SMALL_SET_VALUES for p in names)
    try:  # the default pairs (every stage against ref, and consecutive stages) use every stage: the last is the run's
        ref = run.stage_name(analysis_options.get("ref", 0))
    except (KeyError, TypeError, ValueError, IndexError):
        ref = None  # analyze_run says what is wrong with it
    if ref is None or len(names) < 2 or not small or "pairs" in analysis_options or render.resolve_workers(workers) < 2:
        # matplotlib is loaded meanwhile, in a thread: its import is mostly Python that the analysis' threads, working in
        # numpy, LAPACK and faiss without the GIL, hardly wait for, and the report then starts drawing at once
        warm = threading.Thread(target=_load_matplotlib, name="load-matplotlib", daemon=True)
        warm.start()
        try:
            analysis = analyze_run(run, probes=names, progress=progress, **analysis_options)
        finally:
            warm.join()  # before the report forks its workers: no thread may be importing then
        t1 = time.perf_counter()
        report = make_report(analysis, run, png=png, progress=progress, all_items=all_items, workers=workers)
        return AnalysedRun(analysis, report, t1 - t0, time.perf_counter() - t1)
    last = run.stages[-1]
    _FORKED.update(run=run, options=analysis_options)  # what the workers inherit to analyse sets with
    early = None
    try:
        # the last set goes to a process forked now, before matplotlib is loaded: the second core works meanwhile
        early = _EarlySet(names[-1])
        with render.FigureDrawer(ref, last, len(names), figure_formats(png), workers, progress).start() as drawer:
            _FORKED.clear()
            queued = {name: drawer.call(_analyse_set, name) for name in names[1:-1]}
            queued[names[-1]] = early
            parts = []
            for i, name in enumerate(names):
                part = _collect(queued.get(name), drawer)
                if part is None:  # the first set, a set no worker has started yet, or one a worker failed on
                    part = analyze_run(run, probes=[name], progress=progress, **analysis_options)
                parts.append(part)
                drawer.add(part, more=i < len(names) - 1)
            analysis = RunAnalysis.combine(parts)
            t1 = time.perf_counter()
            report = make_report(analysis, run, png=png, progress=progress, all_items=all_items, drawer=drawer)
    finally:
        _FORKED.clear()
        if early is not None:
            early.stop()
    return AnalysedRun(analysis, report, t1 - t0, time.perf_counter() - t1)



def _load_matplotlib() -> None:
    """``render.warm_up`` in a thread beside the analysis; a failure here is left for the report to raise."""
    try:
        render.warm_up()
    except Exception:  # noqa: BLE001 (the report loads it again and says what is wrong)
        pass


def _analyse_set(name: str) -> RunAnalysis | None:
    """In a worker: one probe set's analysis, or None if it failed (the caller then analyses the set itself, and any
    error is raised there, with its one-line message)."""
    try:
        return analyze_run(_FORKED["run"], probes=[name], **_FORKED["options"])
    except Exception:
        return None


class _EarlySet:
    """One probe set analysed in a process forked before the drawing workers (``_analyse_set``), so that it starts
    while the main process loads matplotlib for them (most of a second on one core, the other idle). To ``_collect``
    and ``FigureDrawer.draw_until`` it looks like a started Future: None if the analysis failed, BrokenProcessPool if
    the process died; either way the set is then analysed in the main process."""

    def __init__(self, name: str):
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_analyse_early, args=(name, child), daemon=True)
        self._proc.start()
        child.close()
        self._result: RunAnalysis | None = None
        self._done = False

    def cancel(self) -> bool:
        return False  # it started at once

    def done(self) -> bool:
        return self._done or self._conn.poll()  # a result, or the end of the pipe (the process is gone)

    def result(self) -> RunAnalysis | None:
        """The set's analysis, or None if it failed; BrokenProcessPool if the process died (killed for memory, say)."""
        if not self._done:
            try:
                self._result = pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError, pickle.UnpicklingError) as e:
                raise BrokenProcessPool("the process analysing a probe set died") from e
            finally:
                self._done = True
                self.stop()
        return self._result

    def stop(self) -> None:
        """End the process (at once if it is still working: the caller failed) and close the pipe."""
        if self._proc.is_alive() and not self._done:
            self._proc.terminate()
        self._proc.join()
        self._conn.close()


def _analyse_early(name: str, conn) -> None:
    """In the early process: the set's analysis (or None), pickled down the pipe. Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send_bytes(pickle.dumps(_analyse_set(name), protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        conn.close()


def _collect(future, drawer: render.FigureDrawer) -> RunAnalysis | None:
    """A queued set's analysis, the earlier sets' figures drawn here meanwhile: None when there is no future, when no
    worker had started it (cancelled, to be done by the caller now instead of waiting), or when the worker failed or
    died."""
    if future is None or future.cancel():
        return None
    drawer.draw_until(future)
    try:
        return future.result()
    except BrokenProcessPool:
        drawer.lost_a_worker()
        return None
