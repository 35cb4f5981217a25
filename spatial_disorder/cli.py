"""`sd-analyze`: thin command line over the run reader, the analyzers, the report and the gate.

Usage:
  sd-analyze RUN_DIR [--ref STAGE] [--probe NAME ...] [--k K] [--fast] [--out DIR] [--backend NAME]
                                        analyse a run and write its report (default command)
  sd-analyze compare RUN_A RUN_B [...] [--out DIR]
  sd-analyze check RUN --ref 0 --candidate -1 --thresholds FILE          two stages of a run
  sd-analyze check --reference RUN_A --candidate RUN_B --thresholds FILE  the same stage of two runs
  sd-analyze check --ref-image a.npy --ref-text b.npy --cand-image c.npy --cand-text d.npy --thresholds FILE
  sd-analyze bridge RUN --ref 0 --candidate -1 [--save DIR]             fit and score a map old -> new (same inputs as check)
  sd-analyze info RUN_DIR               print what a run holds
  sd-analyze validate RUN_DIR [--finite]
Exit codes: 0 success, 1 a check failed (nothing else), 2 bad input, usage or any other error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError, SpatialDisorderError

SUBCOMMANDS = ("analyze", "compare", "check", "bridge", "info", "validate")


def _stage_arg(value: str):
    """A stage given on the command line: an integer index (negative counts from the end) or a name."""
    value = str(value)
    return int(value) if value.lstrip("-").isdigit() else value


def _interactive() -> bool:
    return sys.stderr.isatty()


def _write_output(path, data: bytes) -> None:
    """Write one output file atomically, creating its folder first (a fresh CI checkout has no reports/)."""
    from .atomic import atomic_write_bytes

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _append_output(path, text: str) -> None:
    """Append to a file (the GitHub step summary), creating its folder first."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise InputError(f"{path}: cannot append the step summary ({exc.strerror or exc})") from None


def _cmd_info(args) -> int:
    from .run import open_run

    run = open_run(args.run_dir, check_sha256=False)
    print(f"run      {run.path}")
    print(f"format   v{run.manifest['format_version']}, written by {run.manifest['tool']['name']} {run.manifest['tool']['version']}")
    for key, value in run.metadata.items():
        if not isinstance(value, (dict, list)):
            print(f"{key:<8} {value}")
    print(f"stages   {len(run.stages)}: {', '.join(run.stages)}")
    for name, probe in run.probes.items():
        print(f"probe    {name}: {probe.n_images} images, {probe.n_texts} captions")
    return 0


def _cmd_validate(args) -> int:
    from .run import open_run

    run = open_run(args.run_dir, check_sha256=True, check_finite=args.finite)
    n = len(run.stages) * len(run.probes) * 2
    print(f"ok: {run.path} ({len(run.stages)} stages, {len(run.probes)} probe sets, {n} arrays checked)")
    return 0


def _analysis_options(run, args, ref=0) -> dict:
    """``analyze_run`` keyword arguments from the command line, after the checks that need no analysis."""
    if args.k < 1:
        raise InputError(f"--k must be at least 1, not {args.k}")
    if len(run.stages) == 1:  # nothing to compare: refuse rather than write a report of empty sections
        raise InputError(f"{run.path}: the run holds one stage ({run.stages[0]!r}); sd-analyze compares stages, so it needs at "
                         "least two (append one with RunWriter.open(RUN).write_stage)")
    return dict(ref=ref, probes=args.probe or None, k=args.k, fast=args.fast, backend=args.backend, seed=args.seed,
                progress=_interactive())


@contextmanager
def _stage_errors():
    """An unknown stage name or index (a KeyError from the analysis) as the usual one-line input error."""
    try:
        yield
    except KeyError as exc:
        raise InputError(str(exc.args[0]) if exc.args else str(exc)) from None


def _analyse(run, args, ref=0):
    from .analysis import analyze_run

    options = _analysis_options(run, args, ref)
    with _stage_errors():
        return analyze_run(run, **options)


def _cmd_analyze(args) -> int:
    from .pipeline import analyze_and_report
    from .run import open_run

    t = time.perf_counter()
    run = open_run(args.run_dir)
    options = _analysis_options(run, args, _stage_arg(args.ref))
    with _stage_errors():  # several small probe sets: analysed side by side with the drawing (spatial_disorder/pipeline.py)
        done = analyze_and_report(run, png=args.png, all_items=args.all_items, **options)
    t_write = time.perf_counter()
    out = done.report.write(Path(args.out) if args.out else run.path / "report")
    meta = done.analysis.meta
    print(done.report.summary_text)
    print(f"backend {meta.get('backend')}, k={done.analysis.k}, fast={done.analysis.fast}; {len(done.report.figures)} figures; "
          f"analysis {t_write - t - done.report_s:.1f} s, report {done.report_s + time.perf_counter() - t_write:.1f} s")
    print(f"report: {out / 'index.html'}")
    return 0


def _cmd_compare(args) -> int:
    from .report import compare_runs
    from .report.compare import check_same_items, run_names, shown_probes
    from .run import open_run

    runs = [open_run(p) for p in args.runs]
    check_same_items(runs)  # refuse before any work
    with _stage_errors():  # stages are matched by position: --ref is found in the first run and taken by position in all
        ref = runs[0].stage_index(_stage_arg(args.ref))
    probes = shown_probes(runs, args.probe)  # refused before any work too
    analyses = [_analyse(run, args, ref) for run in runs]
    report = compare_runs(runs, analyses, png=args.png, ref=ref, probes=probes)
    names = run_names(runs)
    out = Path(args.out) if args.out else runs[0].path / f"compare-{'-'.join(names[1:])}"
    out = report.write(out)
    print(f"compared {' vs '.join(names)} ({len(runs[0].stages)} stages against stage {ref}, probe sets {', '.join(probes)})")
    print(f"report: {out / 'index.html'}")
    return 0


def _check_comparisons(args):
    from .gate import from_arrays, from_runs, from_stages
    from .run import open_run

    arrays = [args.ref_image, args.ref_text, args.cand_image, args.cand_text]
    modes = sum([args.run is not None, args.reference is not None, any(a is not None for a in arrays)])
    if modes != 1:
        raise InputError("give exactly one of: RUN (two stages of it), --reference RUN_A --candidate RUN_B, or --ref-*/--cand-* arrays")
    if args.run is not None:
        run = open_run(args.run)
        cand = "-1" if args.candidate is None else args.candidate
        comps = from_stages(run, _stage_arg(args.ref), _stage_arg(cand), args.probe)
        nulls = [from_stages(open_run(p), _stage_arg(args.ref), _stage_arg(cand), args.probe) for p in args.null]
        return comps, nulls
    if args.reference is not None:
        if args.candidate is None:
            raise InputError("--reference needs --candidate RUN_B")
        ref, cand = open_run(args.reference), open_run(args.candidate)
        comps = from_runs(ref, cand, _stage_arg(args.stage), args.probe)
        nulls = [from_runs(ref, open_run(p), _stage_arg(args.stage), args.probe) for p in args.null]
        return comps, nulls
    if args.null:
        raise InputError("--null needs a run (RUN or --reference); with arrays, calibration bootstraps over items only")
    return from_arrays(args.ref_image, args.ref_text, args.cand_image, args.cand_text, args.text_to_image), []


def _cmd_check(args) -> int:
    from .gate import (
        analyse,
        annotations,
        counts,
        evaluate,
        exit_code,
        junit_xml,
        load_thresholds,
        markdown_summary,
        null_band,
        propose,
        to_toml,
        unavailable,
    )

    if not args.calibrate and not args.thresholds:
        raise InputError("--thresholds FILE is required (or --calibrate to propose one)")
    checks = load_thresholds(args.thresholds) if args.thresholds else []  # bad TOML fails before any work
    comps, nulls = _check_comparisons(args)
    label = comps[0].label
    present = {m for c in comps for m in c.reference} | ({"cross"} if all(len(c.reference) == 2 for c in comps) else set())
    missing = unavailable(checks, present)
    if missing:
        which = ", ".join(f"#{i} ({c.metric}, modality {c.modality!r})" for i, c in missing)
        have = " and ".join(m for m in ("image", "text") if m in present)
        raise InputError(f"{args.thresholds}: check(s) {which} cannot be evaluated on {have} embeddings only "
                         "(cross-modal metrics need both image and text); give both modalities or remove those checks")
    if args.calibrate:
        band = null_band([comps, *nulls], replicates=args.replicates, fraction=args.fraction, seed=args.seed, k=args.k,
                         fast=args.fast, backend=args.backend)
        skipped: list = []
        proposed = propose(band, slack=args.slack, skipped=skipped)
        header = (f"Thresholds proposed by sd-analyze check --calibrate from {label}"
                  f"{' and ' + str(len(nulls)) + ' null run(s)' if nulls else ''}: null band over {args.replicates} item subsamples "
                  f"({args.fraction:.0%} of images each), one band width (x{args.slack:g}) beyond the worse edge of the band, "
                  "the comparison itself and identical inputs (so both pass).\n"
                  "Review before use; delete the checks you do not want.")
        if skipped:
            header += "\nNot proposed:" + "".join(f"\n  {m} [{p}/{mod}]: {why}" for p, mod, m, why in skipped)
        text = to_toml(proposed, header)
        if args.write_thresholds:
            _write_output(args.write_thresholds, text.encode("utf-8"))
            print(f"wrote {len(proposed)} checks to {args.write_thresholds}", file=sys.stderr)
        print(text, end="")
        return 0
    t = time.perf_counter()
    summary = analyse(comps, k=args.k, fast=args.fast, backend=args.backend, seed=args.seed)
    results = evaluate(summary, checks)
    print(f"sd-analyze check: {label} ({len(comps)} probe set{'s' if len(comps) != 1 else ''}), thresholds {args.thresholds}")
    for r in results:
        print(r.line())
    c = counts(results)
    code = exit_code(results)
    if args.junit:  # outputs first: a verdict is only printed once everything it reports is on disk
        _write_output(args.junit, junit_xml(results, elapsed_s=time.perf_counter() - t))
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        _append_output(summary_path, markdown_summary(results, title=f"Spatial-disorder gate: {label}"))
        for line in annotations(results, file=args.thresholds):
            print(line)
    print(f"{'FAILED' if code else 'PASSED'}: {c['pass']} passed, {c['warn']} warnings, {c['fail']} failed")
    return code


def _cmd_bridge(args) -> int:
    from . import bridge

    methods = bridge.METHODS if args.method == "all" else (args.method,)
    directions = bridge.DIRECTIONS if args.direction == "all" else (args.direction,)
    comps, _ = _check_comparisons(args)
    results = [(c, *bridge.evaluate_comparison(c, methods, directions, args.fit_fraction, args.seed, args.ridge, args.curve))
               for c in comps]  # every fit and score before anything is written
    for c, ev, curve in results:
        print(bridge.format_evaluation(ev, f"{c.label} [{c.probe}]"))
        if curve is not None:
            print(bridge.format_curve(curve))
    if args.save:
        for c, ev, curve in results:
            folder = Path(args.save) / c.probe if len(results) > 1 else Path(args.save)
            bridge.save_evaluation(folder, ev, curve, args.ridge)
        print(f"maps: {args.save}")
    return 0


def _add_comparison_inputs(p, verb: str) -> None:
    """The three input forms shared by ``check`` and ``bridge``: two stages of a run, two runs, or bare arrays."""
    p.add_argument("run", nargs="?", help=f"a run: {verb} its stages --ref and --candidate")
    p.add_argument("--ref", default="0", help="reference (old) stage of RUN, index or name (default 0)")
    p.add_argument("--candidate", help="candidate (new) stage of RUN, index or name (default -1, the last), or the candidate run with --reference")
    p.add_argument("--reference", metavar="RUN_A", help="reference run (the same --stage of two runs)")
    p.add_argument("--stage", default="-1", help="stage compared between two runs (default -1, the last)")
    for side in ("ref", "cand"):
        for mod in ("image", "text"):
            p.add_argument(f"--{side}-{mod}", metavar="NPY", help=f"{'reference' if side == 'ref' else 'candidate'} {mod} embeddings (.npy)")
    p.add_argument("--text-to-image", metavar="NPY", help="image row of every caption (.npy of ints; default: caption j <-> image j)")


def _add_analysis_options(p: argparse.ArgumentParser, ref: bool = True, report: bool = False) -> None:
    """The analysis options, declared once for analyze, compare and check (``report``: the report's own options)."""
    if ref:
        p.add_argument("--ref", default="0", help="reference stage (index or name; default 0)")
    p.add_argument("--probe", action="append", default=[], metavar="NAME", help="probe set to analyse (repeatable; default all)")
    p.add_argument("--k", type=int, default=10, help="neighbours for the kNN metrics (default 10)")
    p.add_argument("--fast", action="store_true", help="sample query items for the kNN, retrieval and cross-stage metrics")
    p.add_argument("--backend", default="auto", help="neighbour search: auto, faiss, faiss-ivf, torch, numpy")
    p.add_argument("--seed", type=int, default=0, help="seed of every sampled subset (default 0)")
    if report:
        p.add_argument("--png", action="store_true", help="also write every figure as PNG (SVG is always written and embedded)")
        p.add_argument("--svg", action="store_true", help=argparse.SUPPRESS)  # SVG is always written now; kept so old scripts run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-analyze", description="Spatial-disorder analysis of continually trained CLIP runs.",
                                     epilog="sd-analyze RUN_DIR [options] is short for sd-analyze analyze RUN_DIR [options].")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("analyze", help="analyse a run and write its report (the default command)")
    p.add_argument("run_dir")
    _add_analysis_options(p, report=True)
    p.add_argument("--out", help="report folder (default RUN_DIR/report)")
    p.add_argument("--all-items", action="store_true",
                   help="write the per-item tables (items.csv, paired.csv) for every stage pair (default: the --ref -> last pair)")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("compare", help="compare runs over the same probe items and stages")
    p.add_argument("runs", nargs="+", metavar="RUN")
    _add_analysis_options(p, report=True)
    p.add_argument("--out", help="report folder (default RUN_A/compare-<other runs>)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("check", help="CI gate: compare a candidate against a reference under thresholds")
    _add_comparison_inputs(p, "compare")
    p.add_argument("--thresholds", metavar="TOML", help="thresholds file (see docs/gate.md)")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    _add_analysis_options(p, ref=False)
    p.add_argument("--calibrate", action="store_true", help="propose thresholds from a null band instead of checking")
    p.add_argument("--null", action="append", default=[], metavar="RUN", help="with --calibrate: a known-good run with another seed (repeatable)")
    p.add_argument("--replicates", type=int, default=20, help="item subsamples for --calibrate (default 20)")
    p.add_argument("--fraction", type=float, default=0.8, help="share of images in each subsample (default 0.8)")
    p.add_argument("--slack", type=float, default=1.0, help="band widths between the band and a proposed threshold (default 1)")
    p.add_argument("--write-thresholds", metavar="FILE", help="with --calibrate: also write the proposed TOML to FILE")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("bridge", help="fit a map from the reference to the candidate space and score it against re-embedding")
    _add_comparison_inputs(p, "bridge")
    p.add_argument("--probe", action="append", default=[], metavar="NAME", help="probe set (repeatable; default all)")
    p.add_argument("--method", default="all", choices=("orthogonal", "ridge", "all"), help="map to fit (default all)")
    p.add_argument("--direction", default="all", choices=("index", "query", "all"),
                   help="index: carry the old index into the new space; query: carry new queries into the old space (default all)")
    p.add_argument("--fit-fraction", type=float, default=0.5, help="share of images in the calibration split (default 0.5)")
    p.add_argument("--ridge", type=float, default=1e-2, help="ridge strength relative to the mean eigenvalue of A^T A (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration split (default 0)")
    p.add_argument("--curve", action="store_true", help="also print the learning curve over calibration sizes 50, 100, 300, all")
    p.add_argument("--save", metavar="DIR", help="write the fitted maps (.npy + .json), bridge.csv and learning_curve.csv")
    p.set_defaults(func=_cmd_bridge, null=[])

    p = sub.add_parser("info", help="print what a run holds")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("validate", help="check a run directory against the run format")
    p.add_argument("run_dir")
    p.add_argument("--finite", action="store_true", help="also scan every row for NaN or inf")
    p.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "analyze")  # `sd-analyze RUN_DIR ...` is the default command
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors already
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command == "compare" and len(args.runs) < 2:
        print("error: compare needs at least two runs", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except SpatialDisorderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never exit 1, the code of a failed check: CI would read a crash as drift
        if os.environ.get("SD_ANALYZE_TRACEBACK"):
            raise
        print(f"error: {_one_line(exc)} (set SD_ANALYZE_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """An unexpected exception as one line: the file it names (if any), its type and the first line of its message."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
