"""``python -m modx.benchmarks emoji [--data-dir DIR]``: fetch and build a benchmark, print its folder and counts."""

from __future__ import annotations

import argparse
import json
import sys

from modx.benchmarks.emoji import BenchmarkDataError, attribution_text, ensure_emoji_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modx.benchmarks", description="Fetch and build a bundled benchmark.")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    emoji = sub.add_parser("emoji", help="emoji in two open styles (Noto, Twemoji) with CLDR captions, from npm")
    emoji.add_argument("--data-dir", default=None, help="cache folder (default: $SD_DATA, else ~/.cache/spatial-disorder)")
    emoji.add_argument("--quiet", action="store_true", help="print only the dataset folder")
    args = parser.parse_args(argv)
    try:
        path = ensure_emoji_dataset(args.data_dir, progress=not args.quiet)
    except BenchmarkDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        info = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
        print(json.dumps(info["counts"]), file=sys.stderr)
        print(attribution_text(), file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
