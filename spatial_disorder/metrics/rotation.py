"""Intra-modal rotation: per-item rotation angles and topology change (the paper's rotation-angle and
self-angle matrices), in degrees. Inputs are [n, d] arrays of the same items at stages a and b."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..knn import as_unit_rows, block_rows, get_backend

EXACT_TOPOLOGY_MAX = 2000


def check_pair(a, b, name: str = "embeddings") -> None:
    """Stages must hold the same items in the same space: equal item counts and dimensions."""
    if a.shape[0] != b.shape[0]:
        raise InputError(f"{name}: stage a has {a.shape[0]} items but stage b has {b.shape[0]}")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"{name}: stage a has dimension {a.shape[1]} but stage b has {b.shape[1]}")


def unit_angle_deg(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise angle between unit vectors, 2*atan2(|x-y|, |x+y|): exact 0 for equal rows, stable near 0 and 180."""
    x = np.asarray(x)
    y = np.asarray(y)
    dt = np.result_type(x.dtype, y.dtype, np.float32)
    diff = np.subtract(x, y, dtype=dt)
    summ = np.add(x, y, dtype=dt)
    dn = np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64))
    sn = np.sqrt(np.einsum("ij,ij->i", summ, summ, dtype=np.float64))
    return np.degrees(2.0 * np.arctan2(dn, sn))


def rotation_angles(a, b, normalized: bool = False, block: int = 65536) -> np.ndarray:
    """Per-item rotation angle (degrees) between row i of stage a and row i of stage b."""
    a = a if normalized else as_unit_rows(a, "stage a")
    b = b if normalized else as_unit_rows(b, "stage b")
    check_pair(a, b)
    out = np.empty(a.shape[0])
    for s in range(0, a.shape[0], block):
        out[s : s + block] = unit_angle_deg(a[s : s + block], b[s : s + block])
    return out


def distribution(values: np.ndarray) -> dict[str, float]:
    """Mean, median, 10th and 90th percentile of finite values (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"mean": float("nan"), "median": float("nan"), "p10": float("nan"), "p90": float("nan")}
    p10, med, p90 = np.percentile(v, [10, 50, 90])
    return {"mean": float(v.mean()), "median": float(med), "p10": float(p10), "p90": float(p90)}


@dataclass
class TopologyChange:
    """|angle(i, j at a) - angle(i, j at b)| over pairs i < j, degrees.

    ``exact``: every pair was used. Otherwise the pairs are all pairs among ``items`` (a seeded random
    sample of ``exact_max`` items), ``n_pairs`` of them: an unbiased estimate of the all-pairs mean.
    ``per_item`` is each item's mean change over its pairs (NaN for items outside the sample).
    """

    mean_deg: float
    median_deg: float
    p90_deg: float
    n_pairs: int
    exact: bool
    per_item: np.ndarray
    items: np.ndarray | None = None


def topology_items(n: int, exact_max: int = EXACT_TOPOLOGY_MAX, seed: int = 0) -> np.ndarray | None:
    """The seeded item sample used for topology change, or None when every pair is used."""
    if n <= exact_max:
        return None
    return np.sort(np.random.default_rng([seed, n]).choice(n, size=exact_max, replace=False))


def topology_change(a, b, exact_max: int = EXACT_TOPOLOGY_MAX, seed: int = 0, normalized: bool = False,
                    backend=None) -> TopologyChange:
    """Change of within-stage pair angles from a to b: all pairs up to ``exact_max`` items, else all pairs
    among a seeded sample of ``exact_max`` items (blocked either way; nothing n x n is held)."""
    a = a if normalized else as_unit_rows(a, "stage a")
    b = b if normalized else as_unit_rows(b, "stage b")
    check_pair(a, b)
    n = a.shape[0]
    if n < 2:
        raise InputError(f"topology change needs at least 2 items, got {n}")
    items = topology_items(n, exact_max, seed)
    sa, sb = (a, b) if items is None else (a[items], b[items])
    m = sa.shape[0]
    a32, b32 = np.ascontiguousarray(sa, dtype=np.float32), np.ascontiguousarray(sb, dtype=np.float32)
    per = np.zeros(m)
    diffs = []
    rows = block_rows(m, 1 << 22)
    backend = get_backend(backend or "numpy")
    for (s, _, sim_a), (_, _, sim_b) in zip(backend.similarity_blocks(a32, a32, rows), backend.similarity_blocks(b32, b32, rows)):
        ca = np.arccos(np.clip(sim_a, -1.0, 1.0, dtype=np.float32))
        cb = np.arccos(np.clip(sim_b, -1.0, 1.0, dtype=np.float32))
        d = np.abs(ca - cb) * np.float32(180.0 / np.pi)
        idx = np.arange(s, min(s + rows, m))
        d[np.arange(len(idx)), idx] = 0.0
        per[idx] = d.sum(axis=1, dtype=np.float64) / (m - 1)
        diffs.append(d[np.arange(m)[None, :] > idx[:, None]])
    allv = np.concatenate(diffs)
    p50, p90 = np.percentile(allv, [50, 90])
    mean = float(allv.mean(dtype=np.float64))
    if items is None:
        per_item = per
    else:
        per_item = np.full(n, np.nan)
        per_item[items] = per
    return TopologyChange(mean, float(p50), float(p90), len(allv), items is None, per_item, items)
