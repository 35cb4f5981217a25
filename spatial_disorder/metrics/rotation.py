"""Intra-modal rotation: per-item rotation angles and topology change (the paper's rotation-angle and
self-angle matrices), in degrees. Inputs are [n, d] arrays of the same items at stages a and b."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..knn import as_unit_rows, block_rows

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


def rotation_angles(a, b, normalized: bool = False, block: int = 2048) -> np.ndarray:
    """Per-item rotation angle (degrees) between row i of stage a and row i of stage b (blocks small enough for cache)."""
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


def pair_angles(x) -> np.ndarray:
    """Angles (degrees, float32) of every pair ``i < j`` of the unit rows ``x``, row-major upper triangle.

    One stage's share of a topology comparison: computed once per stage and reused by every pair of stages.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    m = x.shape[0]
    out = np.empty(m * (m - 1) // 2, dtype=np.float32)
    rows = block_rows(m, 1 << 22)
    pos = 0
    for s in range(0, m - 1, rows):
        e = min(s + rows, m - 1)
        sims = x[s:e] @ x[s + 1 :].T  # row i of the block against items i + 1 .. m - 1 (and some before)
        ang = np.arccos(np.clip(sims, -1.0, 1.0, dtype=np.float32))
        ang *= np.float32(180.0 / np.pi)
        for r in range(e - s):
            i = s + r
            seg = ang[r, i - s :]  # columns of items i + 1 .. m - 1
            out[pos : pos + len(seg)] = seg
            pos += len(seg)
    return out


def _pair_sums(d: np.ndarray, m: int) -> np.ndarray:
    """Per item, the float64 sum of its entries in the row-major upper triangle ``d`` of an m x m pair matrix (row i
    holds pairs (i, i + 1 .. m - 1)), from contiguous row segments: no m(m - 1)/2 index arrays (building those took
    longer than the rest of a topology comparison)."""
    out = np.zeros(m)
    start = 0
    for i in range(m - 1):
        seg = d[start : start + m - 1 - i]
        out[i] += seg.sum(dtype=np.float64)
        out[i + 1 :] += seg
        start += m - 1 - i
    return out


def topology_from_angles(angles_a: np.ndarray, angles_b: np.ndarray, n: int, items: np.ndarray | None) -> TopologyChange:
    """Topology change from two stages' ``pair_angles`` of the same ``m`` items (``items`` of ``n``, or all)."""
    m = n if items is None else len(items)
    d = np.abs(angles_a - angles_b)
    per = _pair_sums(d, m) / (m - 1)
    p50, p90 = np.percentile(d, [50, 90])
    mean = float(d.mean(dtype=np.float64))
    if items is None:
        per_item = per
    else:
        per_item = np.full(n, np.nan)
        per_item[items] = per
    return TopologyChange(mean, float(p50), float(p90), len(d), items is None, per_item, items)


def topology_change(a, b, exact_max: int = EXACT_TOPOLOGY_MAX, seed: int = 0, normalized: bool = False,
                    backend=None) -> TopologyChange:
    """Change of within-stage pair angles from a to b: all pairs up to ``exact_max`` items, else all pairs
    among a seeded sample of ``exact_max`` items (blocked either way; nothing n x n is held).

    ``backend`` is accepted for compatibility; the sampled blocks are small dense products.
    """
    a = a if normalized else as_unit_rows(a, "stage a")
    b = b if normalized else as_unit_rows(b, "stage b")
    check_pair(a, b)
    n = a.shape[0]
    if n < 2:
        raise InputError(f"topology change needs at least 2 items, got {n}")
    items = topology_items(n, exact_max, seed)
    sa, sb = (a, b) if items is None else (a[items], b[items])
    return topology_from_angles(pair_angles(sa), pair_angles(sb), n, items)
