"""Build and render the report's figures, one task per (probe set, figure), in worker processes when there are cores.

Drawing is the report's whole cost (matplotlib lays out ticks and text and rasterises each figure; nothing is
computed), and figures are independent, so on Linux the tasks are shared among forked workers that inherit the
analysis without copying it and send back only the encoded figures. The page order does not depend on the number
of workers, and a figure drawn in a worker is byte-for-byte the one drawn in the main process. Elsewhere (macOS
and Windows cannot fork safely), with one core, for a handful of figures, or with ``workers=1`` everything runs in
this process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import warnings
from dataclasses import replace

from . import figures as F
from . import upgrade as U
from .style import report_style

# Every per-probe figure, in page order within each section: (analysis, probe, ref, last, n_probes) -> figure or None.
FIGURES = (
    lambda a, p, ref, last, n: F.retrieval_lines(a, p, n),
    lambda a, p, ref, last, n: F.r1_heatmap(a, p, n),
    lambda a, p, ref, last, n: F.flips_bars(a, p, n),
    lambda a, p, ref, last, n: F.rotation_histograms(a, p, ref, n),
    lambda a, p, ref, last, n: F.rotation_heatmap(a, p, n),
    lambda a, p, ref, last, n: F.procrustes_spectra(a, p, ref, n),
    lambda a, p, ref, last, n: F.trajectories(a, p, n),
    lambda a, p, ref, last, n: F.topology_lines(a, p, ref, n),
    lambda a, p, ref, last, n: F.overlap_heatmap(a, p, n),
    lambda a, p, ref, last, n: F.rotation_scatter(a, p, ref, last, a.text_to_image.get(p), n),
    lambda a, p, ref, last, n: F.paired_angle_plot(a, p, n),
    lambda a, p, ref, last, n: U.recovery_curve(a, p, n),
)
MIN_TASKS_PER_WORKER = 4  # below this a worker's start-up (tens of milliseconds) is not repaid
_SHARED: dict = {}  # what forked workers inherit: the analysis and the report's settings


def can_fork() -> bool:
    """Forked workers are safe on Linux and allowed outside daemonic processes (a multiprocessing pool's worker may not
    have children)."""
    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon


def default_workers() -> int:
    """Cores this process may use (at most 4), or 1 where workers cannot be forked."""
    if not can_fork():
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _task(task: tuple[str, int]):
    """Build one figure and encode it; the figure object stays behind (figure=None in what is returned)."""
    probe, index = task
    analysis, ref, last, n, formats = (_SHARED[k] for k in ("analysis", "ref", "last", "n", "formats"))
    with report_style():
        fig = FIGURES[index](analysis, probe, ref, last, n)
        if fig is None:
            return None
        rendered = F.render_figure(fig, formats)
    fig.figure.clear()
    return replace(fig, figure=None), rendered


def _worker_init() -> None:
    """Ctrl-C is the parent's to handle (it stops the pool and prints one line), and one BLAS thread per worker: the
    workers already use every core between them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=1)


def render_figures(analysis, ref: str, last: str, formats=("png",), workers: int | None = None, progress: bool = False):
    """(figures, rendered): the report's figures in page order (``figure`` set to None once encoded) and
    key -> {format: bytes}. ``workers``: processes to draw in (default: the usable cores; always 1 where workers cannot
    be forked)."""
    tasks = [(probe, i) for probe in analysis.probe_names for i in range(len(FIGURES))]
    workers = default_workers() if workers is None else (max(1, int(workers)) if can_fork() else 1)
    workers = min(workers, max(1, len(tasks) // MIN_TASKS_PER_WORKER))
    _SHARED.update(analysis=analysis, ref=ref, last=last, n=len(analysis.probe_names), formats=tuple(formats))
    try:
        results = None
        if workers > 1:
            try:
                with warnings.catch_warnings():  # Python 3.12+ warns about forking a process with threads (faiss, BLAS);
                    # the workers only draw with matplotlib, on one BLAS thread each, and the analysis is over by now
                    warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)
                    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init)
            except OSError:  # no processes to be had (limits): draw here instead
                pool = None
            if pool is not None:
                with pool:
                    results = pool.map(_task, tasks, chunksize=1)
        if results is None:
            results = map(_task, tasks)
            if progress:
                from tqdm.auto import tqdm

                results = tqdm(results, total=len(tasks), desc="figures", leave=False)
            results = list(results)
    finally:
        _SHARED.clear()
    done = [r for r in results if r is not None]
    return [f for f, _ in done], {f.key: rendered for f, rendered in done}
