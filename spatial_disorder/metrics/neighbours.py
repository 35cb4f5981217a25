"""Top-k neighbour drift: how many of an item's k nearest neighbours (cosine, same modality, itself
excluded) at stage a are still among its k nearest at stage b."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..knn import Backend, get_backend
from .rotation import check_pair

DEFAULT_K = 10


def overlap_from_indices(idx_a: np.ndarray, idx_b: np.ndarray, block: int = 16384) -> np.ndarray:
    """Per-row |N_a(i) & N_b(i)| / k from two [n, k] neighbour-index arrays (rows without duplicates)."""
    if idx_a.shape != idx_b.shape:
        raise InputError(f"neighbour lists differ in shape: {idx_a.shape} vs {idx_b.shape}")
    n, k = idx_a.shape
    out = np.empty(n)
    for s in range(0, n, block):
        x, y = idx_a[s : s + block], idx_b[s : s + block]
        out[s : s + block] = (x[:, :, None] == y[:, None, :]).any(axis=2).sum(axis=1) / k
    return out


@dataclass
class OverlapSummary:
    """Mean overlap with a normal-approximation 95% confidence interval (exact mode: interval = mean)."""

    mean: float
    ci_low: float
    ci_high: float
    n_items: int
    sampled: bool


def summarise_overlap(values: np.ndarray, population: int | None = None) -> OverlapSummary:
    """Summarise per-item overlaps; when they are a sample of ``population`` items, add a 95% CI."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    mean = float(v.mean()) if len(v) else float("nan")
    sampled = population is not None and len(v) < population
    if not sampled or len(v) < 2:
        return OverlapSummary(mean, mean, mean, len(v), bool(sampled))
    fpc = np.sqrt((population - len(v)) / max(1, population - 1))  # finite-population correction
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) * fpc
    return OverlapSummary(mean, max(0.0, mean - half), min(1.0, mean + half), len(v), True)


def knn_overlap(a, b, k: int = DEFAULT_K, backend: Backend | str | None = None) -> np.ndarray:
    """Per-item top-k overlap fraction (0-1) between stages a and b, one kNN search per stage."""
    backend = get_backend(backend or "auto")
    check_pair(np.asarray(a) if not hasattr(a, "shape") else a, np.asarray(b) if not hasattr(b, "shape") else b)
    _, ia = backend.topk(a, a, k, exclude_self=True)
    _, ib = backend.topk(b, b, k, exclude_self=True)
    return overlap_from_indices(ia, ib)
