"""`sd-analyze`: thin command line over the run reader, the analyzers, the report and the gate.

Usage:
  sd-analyze RUN_DIR [options]          analyse a run and write its report (default command)
  sd-analyze info RUN_DIR               print what a run holds
  sd-analyze validate RUN_DIR [--finite]
Exit codes: 0 success, 1 a check failed, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import sys

from .errors import SpatialDisorderError


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-analyze", description="Spatial-disorder analysis of continually trained CLIP runs.")
    sub = parser.add_subparsers(dest="command")
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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors already
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpatialDisorderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
