"""Bundled benchmarks built from openly licensed packages (no hub downloads); cheap to import (no torch).

The names below are loaded on first use, so that ``python -m modx.benchmarks.emoji`` runs the module once.
"""

from __future__ import annotations

__all__ = ["DATASET_NAME", "BenchmarkDataError", "attribution_text", "ensure_emoji_dataset", "load_emoji_table"]


def __getattr__(name: str):
    if name in __all__:
        from . import emoji

        return getattr(emoji, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
