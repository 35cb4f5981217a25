"""A clear message when the training stack (the `train` extra) is not installed."""

from __future__ import annotations

import importlib.util
import sys

MISSING_HINT = (
    "modx needs the training extra (torch, torchvision, open_clip_torch): "
    "pip install 'spatial-disorder[train]'"
)


def missing_training_stack() -> list[str]:
    return [m for m in ("torch", "torchvision", "open_clip") if importlib.util.find_spec(m) is None]


def require_training_stack() -> None:
    """Exit with one line (status 2) when torch/open_clip are absent."""
    missing = missing_training_stack()
    if missing:
        print(f"error: {MISSING_HINT} (missing: {', '.join(missing)})", file=sys.stderr)
        raise SystemExit(2)
