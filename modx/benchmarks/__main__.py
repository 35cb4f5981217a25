"""``python -m modx.benchmarks emoji [--data-dir DIR]``: fetch and build a benchmark, print its folder and counts."""

from __future__ import annotations

import argparse

from modx.benchmarks import emoji


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modx.benchmarks", description="Fetch and build a bundled benchmark.")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    emoji.add_cli_arguments(sub.add_parser("emoji", help="emoji in two open styles (Noto, Twemoji) with CLDR captions, from npm"))
    args = parser.parse_args(argv)
    return emoji.cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
