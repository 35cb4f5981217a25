"""Orthogonal Procrustes between two stages: the best rigid rotation, its angle spectrum, and how much of
the change it explains. All angles in degrees."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from ..knn import as_unit_rows
from .rotation import check_pair

_BLOCK = 8192


@dataclass
class ProcrustesResult:
    """``R`` minimises ||A R - B||_F over orthogonal matrices (A, B row-normalised, optionally centred).

    ``angles_deg``: the rotation-angle spectrum, one angle per 2-D rotation plane (conjugate eigenvalue
    pairs counted once), descending. ``geodesic_deg`` = sqrt(sum of squared plane angles), the geodesic
    distance from the identity on O(d). ``residual_frac`` = ||A R - B||^2 / ||A - B||^2 (0 when A == B).
    """

    R: np.ndarray
    angles_deg: np.ndarray
    geodesic_deg: float
    max_deg: float
    residual_frac: float
    centred: bool


@dataclass
class Gram:
    """Per-stage pieces of a Procrustes fit: G = A^T A, column sums of A, and the row count (cacheable)."""

    g: np.ndarray
    colsum: np.ndarray
    n: int


@dataclass
class CrossProducts:
    """Everything a fit needs, in a form that stays accurate when B is close to A.

    With D = B - A (formed in float32 before any sum): ``c`` = A^T D, ``nd`` = ||D||^2. A^T B = G + C,
    and the residual ||A R - B||^2 = tr(E^T G E) - 2 tr(E^T C) + ||D||^2 with E = R - I, so no large
    sums are subtracted from each other.
    """

    gram: Gram
    c: np.ndarray
    dsum: np.ndarray
    nd: float


def gram(a, block: int = _BLOCK) -> Gram:
    """G = A^T A (float32 blocks, float64 accumulation) and the column sums of A."""
    d = a.shape[1]
    g, cs = np.zeros((d, d)), np.zeros(d)
    for s in range(0, a.shape[0], block):
        x = np.asarray(a[s : s + block], dtype=np.float32)
        g += x.T @ x
        cs += x.sum(axis=0, dtype=np.float64)
    return Gram(g, cs, a.shape[0])


def cross_products(a, b, gram_a: Gram | None = None, block: int = _BLOCK) -> CrossProducts:
    """Blocked products for fitting A -> B; pass ``gram_a`` to reuse stage a's Gram matrix."""
    gram_a = gram_a or gram(a, block)
    d = a.shape[1]
    c, ds = np.zeros((d, d)), np.zeros(d)
    nd = 0.0
    for s in range(0, a.shape[0], block):
        x = np.asarray(a[s : s + block], dtype=np.float32)
        delta = np.asarray(b[s : s + block], dtype=np.float32) - x
        c += x.T @ delta
        ds += delta.sum(axis=0, dtype=np.float64)
        nd += float(np.einsum("ij,ij->", delta, delta, dtype=np.float64))
    return CrossProducts(gram_a, c, ds, nd)


def small_linalg():
    """Run d x d LAPACK work on one thread: multi-threaded SVDs of 512 x 512 matrices are many times
    slower on a busy machine (threads wait on each other) and gain nothing on an idle one."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: sklearn and scipy bring it in most environments
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def spectrum_summary(r: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Plane angles (degrees, descending), geodesic angle and largest angle of an orthogonal matrix.

    The symmetric part (R + R^T)/2 has eigenvalues cos(theta), each plane's angle appearing twice (a
    reflection appears once, as 180 degrees), so a symmetric eigensolver gives the spectrum exactly and fast.
    The geodesic angle is sqrt(sum over planes of theta^2) = ||log R||_F / sqrt(2).
    """
    with small_linalg():
        cos = np.linalg.eigvalsh((r + r.T) / 2.0)
    every = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    planes = np.sort(every)[::-1][::2].copy()
    return planes, float(np.sqrt(np.sum(every**2) / 2.0)), float(every.max())


def rotation_spectrum(r: np.ndarray) -> np.ndarray:
    """Angles (degrees, descending) of an orthogonal matrix, one per rotation plane."""
    return spectrum_summary(r)[0]


def procrustes_from_products(p: CrossProducts, centred: bool = False) -> ProcrustesResult:
    """Fit R = argmin ||A R - B|| over orthogonal R from precomputed products (optionally centring A and B)."""
    g, c, nd, n = p.gram.g, p.c, p.nd, p.gram.n
    if centred:
        ma, md = p.gram.colsum / n, p.dsum / n
        g = g - n * np.outer(ma, ma)
        c = c - n * np.outer(ma, md)
        nd = nd - n * float(md @ md)
    with small_linalg():
        u, _, vt = np.linalg.svd(g + c)
        r = u @ vt
        e = r - np.eye(len(r))
        residual = float(np.sum(e * (g @ e)) - 2.0 * np.sum(e * c) + nd)
    scale = float(np.trace(g))
    frac = 0.0 if nd <= 1e-12 * max(1.0, scale) else min(1.0, max(0.0, residual) / nd)
    planes, geo, mx = spectrum_summary(r)
    return ProcrustesResult(r, planes, geo, mx, frac, centred)


def procrustes(a, b, centred: bool = False, normalized: bool = False) -> ProcrustesResult:
    """Fit the orthogonal map from stage a to stage b (rows L2-normalised first)."""
    a = a if normalized else as_unit_rows(a, "stage a")
    b = b if normalized else as_unit_rows(b, "stage b")
    check_pair(a, b)
    return procrustes_from_products(cross_products(a, b), centred=centred)
