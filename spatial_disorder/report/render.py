"""Build and render the report's figures, one task per (probe set, figure), in worker processes when there are cores.

Drawing is the report's whole cost (matplotlib lays out ticks and text and rasterises each figure; nothing is
computed), and figures are independent, so on Linux the tasks are shared among forked workers that inherit the
analysis without copying it and send back only the encoded figures. The workers can start before the analysis is
over: ``FigureDrawer.add`` takes one probe set's analysis at a time, ``call`` lends the workers to the caller (the
pipeline has them analyse probe sets) and ``draw_until`` draws queued figures in the caller while it waits
(spatial_disorder/pipeline.py). The page order does not depend on the number of workers, on when the sets were added
or on which process drew a figure, and a figure drawn in a worker is byte-for-byte the one drawn in the main process.
Elsewhere (macOS and Windows cannot fork safely), with one core, for a handful of figures, or with ``workers=1``
everything is drawn in this process, in ``finish``.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from ..machine import usable_cores
from . import figures as F
from . import upgrade as U
from .style import report_style

# Every per-probe figure, in page order within each section: (analysis, probe, ref, last, n_probes) -> figure or None.
FIGURES = (
    lambda a, p, ref, last, n: F.retrieval_lines(a, p, n),
    lambda a, p, ref, last, n: F.r1_heatmap(a, p, n),
    lambda a, p, ref, last, n: F.flips_bars(a, p, n),
    lambda a, p, ref, last, n: F.rotation_histograms(a, p, ref, n),
    lambda a, p, ref, last, n: F.rotation_stages(a, p, ref, n),
    lambda a, p, ref, last, n: F.procrustes_spectra(a, p, ref, n),
    lambda a, p, ref, last, n: F.trajectories(a, p, n),
    lambda a, p, ref, last, n: F.topology_lines(a, p, ref, n),
    lambda a, p, ref, last, n: F.overlap_stages(a, p, ref, n),
    lambda a, p, ref, last, n: F.rotation_scatter(a, p, ref, last, a.text_to_image.get(p), n),
    lambda a, p, ref, last, n: F.paired_angle_plot(a, p, n),
    lambda a, p, ref, last, n: U.recovery_curve(a, p, n),
)
MIN_TASKS_PER_WORKER = 4  # below this a worker's start-up (tens of milliseconds) is not repaid
# What forked workers inherit: the report's settings and the analyses added before the pool started, by part number
# (a part added later travels pickled with its tasks, once per worker, and is kept there under its number).
_SHARED: dict = {}
_PARTS: dict = {}


def can_fork() -> bool:
    """Forked workers are safe on Linux and allowed outside daemonic processes (a multiprocessing pool's worker may not
    have children)."""
    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon


def default_workers() -> int:
    """Cores this process may use (at most 4), or 1 where workers cannot be forked."""
    if not can_fork():
        return 1
    return max(1, min(4, usable_cores()))


def resolve_workers(workers: int | None) -> int:
    """The drawing processes to use: ``workers`` (default: the usable cores), and 1 wherever workers cannot be forked."""
    return default_workers() if workers is None else (max(1, int(workers)) if can_fork() else 1)


def draw(analysis, probe: str, index: int, ref: str, last: str, n_probes: int, formats) -> tuple | None:
    """Build one figure and encode it: (ReportFigure with ``figure`` None, {format: bytes}), or None when it has no data.
    The figure object stays behind (dropping it frees it; clearing it would rebuild its axes first)."""
    with report_style():
        fig = FIGURES[index](analysis, probe, ref, last, n_probes)
        if fig is None:
            return None
        rendered = F.render_figure(fig, formats)
    return replace(fig, figure=None), rendered


def _task(task: tuple):
    _yield_to_analysis()
    part, blob, probe, index = task
    analysis = _PARTS.get(part)
    if analysis is None:
        analysis = _PARTS[part] = pickle.loads(blob)
    return draw(analysis, probe, index, *(_SHARED[k] for k in ("ref", "last", "n", "formats")))


WORKER_NICENESS = 10  # drawing yields to the analysis: with figures drawn while a run is analysed, it is the critical path
_niced = False  # whether this worker has lowered its priority


def _yield_to_analysis() -> None:
    """Before a worker's first figure: a lower priority, so that a core the analysis needs goes to the analysis
    (spatial_disorder/pipeline.py) and the drawing takes what it leaves (once it is over, everything). Not at start:
    a worker may analyse a probe set first, at the analysis' priority."""
    global _niced
    if not _niced:
        _niced = True
        try:
            os.nice(WORKER_NICENESS)
        except (AttributeError, OSError):
            pass


def _worker_init() -> None:
    """Ctrl-C is the parent's to handle (it stops the pool and prints one line), and one BLAS thread per worker (the
    workers already use every core between them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
    except ImportError:
        pass


def warm_up() -> None:
    """Import matplotlib and draw one tiny figure (fonts found and loaded), for forked workers to inherit."""
    import io

    from matplotlib.figure import Figure

    with report_style():
        fig = Figure(figsize=(1, 1))
        fig.subplots().set_title("0")
        fig.savefig(io.BytesIO(), format="svg")


class FigureDrawer:
    """The figures of a report in page order, drawn by forked workers while the caller goes on, or here in ``finish``.

    ``add(analysis)`` queues the figures of every probe set of ``analysis`` (the whole analysis, or one set's part with
    ``more=True`` while the caller analyses the next); ``finish()`` returns (figures, rendered, extra): the figures in page
    order (``figure`` None once encoded), key -> {format: bytes}, and what ``meanwhile()`` returned. ``workers``:
    processes to draw in (default: the usable cores; always 1 where workers cannot be forked). Use it as a context
    manager so that the workers stop if the caller fails before ``finish``. A worker that dies (killed for memory, say)
    does not hang or fail the report: the figures it had not sent back are drawn here, with a one-line warning.
    ``call(fn, *args)`` runs other work in the workers, queued after the figures added so far, and ``draw_until(future)``
    draws queued figures here while the caller waits for such work.
    """

    def __init__(self, ref: str, last: str, n_probes: int, formats=("svg",), workers: int | None = None, progress: bool = False):
        self.ref, self.last, self.n_probes, self.formats, self.progress = ref, last, n_probes, tuple(formats), progress
        self.workers = min(resolve_workers(workers), max(1, n_probes * len(FIGURES) // MIN_TASKS_PER_WORKER))
        self._pool = None
        self._inherited = None  # the part the workers were forked with
        self._added = 0  # analyses added so far (a part's number is its place among them)
        self._tasks: list = []  # (analysis, probe, figure index) in page order
        self._futures: list = []  # one per task: the worker's result to come, or None (drawn here, in finish)
        self._warned = False

    def start(self) -> FigureDrawer:
        """Start the workers now, before the first probe set is analysed, so that they can take work from the caller
        (``call``) while it analyses (the sets then all travel pickled); otherwise they start at the first ``add`` and
        inherit that set. Matplotlib is loaded here first, once, and the workers inherit it: loading it in each worker
        costs each of them most of a second, with the analysis waiting for its cores."""
        if self.workers > 1 and self._pool is None:
            warm_up()
            self._start(None, None)
        return self

    def add(self, analysis, more: bool = False) -> None:
        """Queue the figures of ``analysis``'s probe sets (drawn now in the workers, if any); ``more``: other parts follow."""
        part, self._added = self._added, self._added + 1
        tasks = [(analysis, probe, i) for probe in analysis.probe_names for i in range(len(FIGURES))]
        self._tasks += tasks
        if self.workers > 1 and self._pool is None:
            self._start(part, analysis)
        blob = None if self._pool is None or part == self._inherited else pickle.dumps(analysis, protocol=pickle.HIGHEST_PROTOCOL)
        self._futures += [self._submit(_task, (part, blob, probe, i)) for _, probe, i in tasks]

    def call(self, fn: Callable, *args):
        """Run ``fn(*args)`` in a worker, queued after the figures added so far: a Future, or None where there are no
        workers (or they died), for the caller to run it itself. ``fn`` must be a module-level function; what it needs
        beyond ``args`` it finds in the state the workers were forked with (the pipeline analyses probe sets this way,
        spatial_disorder/pipeline.py)."""
        return self._submit(fn, *args)

    def draw_until(self, future) -> None:
        """Draw queued figures here, ones no worker has started, until ``future`` is done: the caller waits for a
        worker's result without leaving its core idle (a figure takes a fraction of a second, so it waits no longer)."""
        for index, queued in enumerate(self._futures):
            if future.done():
                return
            if queued is not None and queued.cancel():  # not started: take it from the workers' queue
                analysis, probe, i = self._tasks[index]
                done = Future()
                done.set_result(draw(analysis, probe, i, self.ref, self.last, self.n_probes, self.formats))
                self._futures[index] = done

    def _submit(self, fn: Callable, *args):
        if self._pool is None:
            return None
        try:
            return self._pool.submit(fn, *args)
        except BrokenProcessPool:  # a worker died since: what is left is done in this process
            self.lost_a_worker()
            return None

    def lost_a_worker(self) -> None:
        """Say once, on one line, that a worker died and that the rest is done in this process."""
        if not self._warned:
            self._warned = True
            print("warning: a worker process died (out of memory?); the rest of the report is made in this process",
                  file=sys.stderr)

    def _start(self, part: int | None, analysis) -> None:
        _SHARED.update(ref=self.ref, last=self.last, n=self.n_probes, formats=self.formats)
        _PARTS.clear()
        if part is not None:
            _PARTS[part] = analysis  # inherited by the workers: its tasks carry no copy
            self._inherited = part
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns about forking a process with threads (faiss, BLAS);
                # the workers only draw with matplotlib, on one BLAS thread each
                warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                                 initializer=_worker_init)
                self._pool.submit(os.getpid)  # a fork pool forks every worker at its first task: now, with _PARTS as it is
        except OSError:  # no processes to be had (limits): draw here instead
            self._pool = None
        finally:
            _PARTS.clear()  # the parent keeps its parts in self._tasks; the workers have their copy

    def finish(self, meanwhile: Callable[[], object] | None = None) -> tuple[list, dict, object]:
        """Wait for the figures (running ``meanwhile`` here first, while the workers draw) and return them in page order."""
        try:
            extra = meanwhile() if meanwhile is not None else None
            here = (self._pool is None) and self.progress
            steps = zip(self._tasks, self._futures)
            if here:
                from tqdm.auto import tqdm

                steps = tqdm(steps, total=len(self._tasks), desc="figures", leave=False)
            results = []
            for (analysis, probe, i), future in steps:
                if future is not None:
                    try:
                        results.append(future.result())
                        continue
                    except BrokenProcessPool:  # every unfinished task fails at once: each is drawn here
                        self.lost_a_worker()
                results.append(draw(analysis, probe, i, self.ref, self.last, self.n_probes, self.formats))
        finally:
            self.close()
        done = [r for r in results if r is not None]
        return [f for f, _ in done], {f.key: rendered for f, rendered in done}, extra

    def close(self) -> None:
        """Stop the workers (figures not yet started are dropped) and forget the queued parts."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._tasks, self._futures = [], []
        _SHARED.clear()

    def __enter__(self) -> FigureDrawer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
