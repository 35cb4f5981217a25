"""Atomic checkpoints: ``torch.save`` to a temporary file in the same folder, fsync, rename."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from spatial_disorder.atomic import atomic_write


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file: a crash keeps the previous checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint safely (``weights_only=True``) onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)
