"""CPU cost of each report figure, drawn and encoded as `sd-analyze` draws it (one process, SVG).

Drawing is most of the report's CPU on a quick run (docs/metrics.md, "where the quickstart's CPU goes"), so this is
the measurement to watch when a figure changes. It analyses a run once (not timed), loads matplotlib, then draws
every (probe set, figure) task ``--rounds`` times and prints, per figure, the median CPU seconds over its probe sets
and rounds, and the total of one report's figures (the median round).

Usage:
  python experiments/bench_figures.py                   # a quickstart-shaped synthetic run (3 x 300 images, d = 64)
  python experiments/bench_figures.py RUN_DIR --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(run, rounds: int) -> tuple[dict[str, list[float]], list[float]]:
    """{figure key without its probe suffix: CPU seconds of each draw}, and each round's total."""
    from spatial_disorder.analysis import analyze_run
    from spatial_disorder.report import render

    analysis = analyze_run(run)
    ref, last, n = analysis.ref, analysis.stages[-1], len(analysis.probe_names)
    render.warm_up()  # as the workers inherit it
    per_figure: dict[str, list[float]] = {}
    totals = []
    for _ in range(rounds):
        total = 0.0
        for probe in analysis.probe_names:
            for index in range(len(render.FIGURES)):
                start = time.process_time()
                drawn = render.draw(analysis, probe, index, ref, last, n, ("svg",))
                spent = time.process_time() - start
                total += spent
                if drawn is not None:
                    per_figure.setdefault(drawn[0].key.removesuffix(f"_{probe}"), []).append(spent)
        totals.append(total)
    return per_figure, totals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="run directory (default: a synthetic quickstart-shaped run)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    from spatial_disorder import open_run

    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            path = Path(args.run)
        else:
            from experiments.bench_analyze import make_run

            path = make_run(Path(tmp) / "run", 300, 64, 6, captions=4, n_probes=3)
        per_figure, totals = measure(open_run(path, check_sha256=False), args.rounds)
    print(f"{'figure':<24}{'CPU s (median)':>16}{'draws':>7}")
    for key, spent in per_figure.items():
        print(f"{key:<24}{statistics.median(spent):>16.3f}{len(spent):>7}")
    drawn = sum(len(v) for v in per_figure.values()) // args.rounds
    print(f"one report's {drawn} figures: {statistics.median(totals):.2f} CPU s (median of {args.rounds} rounds: "
          + ", ".join(f"{t:.2f}" for t in totals) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
