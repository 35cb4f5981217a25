"""Bundled benchmarks built from openly licensed packages (no hub downloads); cheap to import (no torch)."""

from modx.benchmarks.emoji import (
    DATASET_NAME,
    BenchmarkDataError,
    attribution_text,
    ensure_emoji_dataset,
    load_emoji_table,
)

__all__ = ["DATASET_NAME", "BenchmarkDataError", "attribution_text", "ensure_emoji_dataset", "load_emoji_table"]
