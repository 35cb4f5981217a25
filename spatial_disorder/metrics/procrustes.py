"""Orthogonal Procrustes between two stages: the best rigid rotation, its angle spectrum, and how much of
the change it explains. All angles in degrees.

Real embeddings fill only a few of their d directions; the rest hold almost no variance, and a rotation fitted
over all d directions turns those empty directions arbitrarily (by up to 180 degrees), which swamps every summary
of its angles. So the rotation is fitted where the data live: in the principal subspace of the two stages together
holding every direction with at least a tenth of the average direction's variance, as a proper rotation (determinant +1), and is the identity
outside it. Each plane angle is reported with the share of the variance its plane carries (docs/metrics.md).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import numpy as np

from ..knn import as_unit_rows
from .rotation import check_pair, unit_angle_deg

_BLOCK = 8192
DEFAULT_FLOOR = 0.1


@dataclass
class ProcrustesResult:
    """``R`` (d x d) minimises ||A R - B||_F over proper rotations that act only inside ``basis`` (the
    principal subspace of A and B together holding ``variance_held`` of their variance; A, B row-normalised,
    optionally centred) and leave its complement fixed.

    ``angles_deg``: the rotation-angle spectrum, one angle per 2-D rotation plane of R inside the subspace,
    descending; ``plane_share``: the share of the two stages' total variance each plane carries.
    ``geodesic_deg`` = sqrt(sum of squared plane angles), the geodesic distance of R from the identity;
    ``max_deg`` the largest plane angle. ``residual_frac`` = ||A R - B||^2 / ||A - B||^2 over all d
    directions (0 when A == B); ``dim`` = the subspace dimension r.
    """

    R: np.ndarray
    angles_deg: np.ndarray
    geodesic_deg: float
    max_deg: float
    residual_frac: float
    centred: bool
    plane_share: np.ndarray | None = None
    dim: int = 0
    variance_held: float = 1.0
    basis: np.ndarray | None = None
    rotation: np.ndarray | None = None  # the r x r rotation inside ``basis``


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


_LIMIT = threading.local()  # per thread: how deep in small_linalg (pair threads and fit threads nest their own)


@contextlib.contextmanager
def small_linalg(size: int | None = None):
    """Run d x d LAPACK work on one thread: multi-threaded SVDs of 512 x 512 matrices are many times
    slower on a busy machine (threads wait on each other) and gain nothing on an idle one. Nested uses cost
    nothing (setting the limit takes milliseconds, so a fit sets it once around all its steps); with ``size`` under
    256 nothing is set (a 64 x 64 decomposition costs less than setting the limit)."""
    depth = getattr(_LIMIT, "depth", 0)
    if depth or (size is not None and size < 256):
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: sklearn and scipy bring it in most environments
        limit = contextlib.nullcontext()
    else:
        limit = threadpool_limits(limits=1, user_api="blas")
    with limit:
        _LIMIT.depth = depth + 1
        try:
            yield
        finally:
            _LIMIT.depth = depth


def spectrum_summary(r: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Plane angles (degrees, descending), geodesic angle and largest angle of an orthogonal matrix.

    The symmetric part (R + R^T)/2 has eigenvalues cos(theta), each plane's angle appearing twice (a
    reflection appears once, as 180 degrees), so a symmetric eigensolver gives the spectrum exactly and fast.
    The geodesic angle is sqrt(sum over planes of theta^2) = ||log R||_F / sqrt(2).
    """
    planes, geo, mx, _ = plane_spectrum(r)
    return planes, geo, mx


def plane_spectrum(r: np.ndarray, moment: np.ndarray | None = None) -> tuple[np.ndarray, float, float, np.ndarray | None]:
    """As ``spectrum_summary``, plus the share of ``moment``'s trace that each plane carries (None without one).

    The eigenvectors of (R + R^T)/2 for one plane's eigenvalue pair span that plane, so the variance a plane
    carries is the sum of w^T M w over its two eigenvectors (planes with equal angles share their total).
    """
    with small_linalg():
        if moment is None:
            cos, vec = np.linalg.eigvalsh((r + r.T) / 2.0), None
        else:
            cos, vec = np.linalg.eigh((r + r.T) / 2.0)
    every = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    order = np.argsort(every, kind="stable")[::-1]
    planes = every[order][::2].copy()
    geo = float(np.sqrt(np.sum(every**2) / 2.0))
    mx = float(every.max()) if len(every) else 0.0
    if vec is None:
        return planes, geo, mx, None
    total = float(np.trace(moment))
    per_vector = np.sum(vec * (moment @ vec), axis=0) / (total if total > 0 else 1.0)
    ordered = per_vector[order]
    share = np.add.reduceat(ordered, np.arange(0, len(ordered), 2)) if len(ordered) else ordered
    return planes, geo, mx, np.clip(share, 0.0, None)


def rotation_spectrum(r: np.ndarray) -> np.ndarray:
    """Angles (degrees, descending) of an orthogonal matrix, one per rotation plane."""
    return spectrum_summary(r)[0]


def principal_basis(moment: np.ndarray, floor: float = DEFAULT_FLOOR) -> tuple[np.ndarray, float]:
    """Orthonormal basis (d x r) of the eigenvectors of a second-moment matrix whose variance is at least ``floor``
    times the average direction's (trace / d), and the share of the trace they hold. ``floor = 0`` keeps every
    direction. Isotropic noise that moves items by an angle phi (radians) puts about phi^2 of the average
    variance in each direction, so the default 0.1 leaves out directions that such noise of up to ~18 degrees
    could fill on its own."""
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"variance floor must be in [0, 1), got {floor}")
    d = len(moment)
    if floor == 0.0:
        return np.eye(d), 1.0
    sym = (moment + moment.T) / 2.0
    with small_linalg():
        if _every_direction_holds(sym, floor):  # the common case at d = 512: no eigenvalues needed
            return np.eye(d), 1.0
        w, v = np.linalg.eigh(sym)  # one decomposition: eigenvalues first and vectors after cost more than both at once
        w = np.clip(w[::-1], 0.0, None)
        total = float(w.sum())
        r = max(1, int(np.sum(w >= floor * total / d))) if total > 0.0 else d
        if r == d:  # every direction holds data: any basis of the whole space gives the same fit
            return np.eye(d), 1.0
    return v[:, : d - r - 1 : -1], float(w[:r].sum() / total)


def _every_direction_holds(sym: np.ndarray, floor: float) -> bool:
    """True when every eigenvalue of the symmetric ``sym`` is at least ``floor`` times the average (trace / d): exactly when
    ``sym - tau I`` has a Cholesky factor, a third of the cost of the eigenvalues (512 x 512: 5 ms against 15). On failure
    the caller computes the eigenvalues, so the two can differ only for an eigenvalue within rounding of the floor."""
    d = len(sym)
    total = float(np.trace(sym))
    if not total > 0.0:
        return False
    try:
        np.linalg.cholesky(sym - (floor * total / d) * np.eye(d))
    except np.linalg.LinAlgError:
        return False
    return True


def _polar_parts(k: np.ndarray):
    """(R, u_weak, v_weak): the orthogonal polar factor R = U V^T of a square K and its weakest singular pair.

    R = K (K^T K)^(-1/2), from a symmetric eigensolver (about twice as fast as an SVD of a 512 x 512 matrix); when K is
    too ill-conditioned for that (smallest singular value under 1e-4 of the largest, where squaring would cost
    accuracy) it comes from the SVD instead."""
    with small_linalg(len(k)):
        w, v = np.linalg.eigh(k.T @ k)
        s = np.sqrt(np.clip(w, 0.0, None))
        if len(s) and s[0] > 1e-4 * s[-1]:
            u = (k @ v) / s  # left singular vectors, ascending singular values
            return u @ v.T, u[:, 0], v[:, 0]
        u, _, vt = np.linalg.svd(k)
        return u @ vt, u[:, -1], vt[-1]


def polar_factor(k: np.ndarray) -> np.ndarray:
    """argmax_R tr(R^T K) over orthogonal R (reflections allowed): the orthogonal polar factor of K."""
    return _polar_parts(k)[0]


def proper_rotation(k: np.ndarray) -> np.ndarray:
    """argmax_R tr(R^T K) over rotations with determinant +1 (Kabsch): the orthogonal polar factor of K, with the
    weakest singular direction flipped when that factor would be a reflection."""
    r, u, v = _polar_parts(k)
    if np.linalg.det(r) < 0:
        r = r - 2.0 * np.outer(u, v)
    return r


def pair_moments(p: CrossProducts, gram_b: Gram, centred: bool) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """(G, C, ||D||^2, M): A^T A, A^T (B - A), the squared change, and the pooled second moment (G_a + G_b) / 2n,
    all centred on each stage's mean when ``centred``."""
    g, c, nd, n = p.gram.g, p.c, p.nd, p.gram.n
    gb = gram_b.g
    if centred:
        ma, md = p.gram.colsum / n, p.dsum / n
        mb = gram_b.colsum / n
        g = g - n * np.outer(ma, ma)
        c = c - n * np.outer(ma, md)
        nd = nd - n * float(md @ md)
        gb = gb - n * np.outer(mb, mb)
    return g, c, nd, (g + gb) / (2.0 * n)


def _is_whole_space(basis: np.ndarray) -> bool:
    """True for the identity basis ``principal_basis`` returns when every direction is kept (projections are no-ops)."""
    d, r = basis.shape
    return d == r and np.array_equal(basis, np.eye(d))


def _inside(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """basis^T x basis: a d x d matrix restricted to the subspace."""
    return x if _is_whole_space(basis) else basis.T @ x @ basis


def subspace_spectrum(rr: np.ndarray, moment: np.ndarray, basis: np.ndarray):
    """``plane_spectrum`` of a rotation ``rr`` acting inside ``basis``, each plane's variance share taken relative to the
    whole of ``moment`` (all d directions), not to the subspace's part of it."""
    inside = _inside(moment, basis)
    planes, geo, mx, shares = plane_spectrum(rr, inside)
    total = float(np.trace(moment))
    if total > 0:
        shares = shares * float(np.trace(inside)) / total
    return planes, geo, mx, shares


def fit_in_subspace(g, c, nd, moment, basis, held, centred: bool, spectrum: bool = True) -> ProcrustesResult:
    """The proper rotation inside ``basis`` that best maps A onto B, its spectrum and residual (see ProcrustesResult).
    ``spectrum=False`` fits the rotation only (angles, shares and residual left empty), for callers that need R alone."""
    d, r = basis.shape
    gr, cr = _inside(g, basis), _inside(c, basis)
    rr = proper_rotation(gr + cr)
    f = rr - np.eye(r)
    full = np.eye(d) + f if _is_whole_space(basis) else np.eye(d) + basis @ f @ basis.T
    if not spectrum:
        return ProcrustesResult(full, np.empty(0), float("nan"), float("nan"), float("nan"), centred, None, r, held, basis, rr)
    residual = float(np.sum(f * (gr @ f)) - 2.0 * np.sum(f * cr) + nd)
    scale = float(np.trace(g))
    frac = 0.0 if nd <= 1e-12 * max(1.0, scale) else min(1.0, max(0.0, residual) / nd)
    planes, geo, mx, shares = subspace_spectrum(rr, moment, basis)
    return ProcrustesResult(full, planes, geo, mx, frac, centred, shares, r, held, basis, rr)


def procrustes_from_products(p: CrossProducts, gram_b: Gram, centred: bool = False, floor: float = DEFAULT_FLOOR) -> ProcrustesResult:
    """Fit the proper rotation from stage a to stage b in their principal subspace, from precomputed products."""
    with small_linalg():
        g, c, nd, moment = pair_moments(p, gram_b, centred)
        basis, held = principal_basis(moment, floor)
        return fit_in_subspace(g, c, nd, moment, basis, held, centred)


@dataclass
class JointRotations:
    """Both modalities' rotations fitted in one subspace (the principal subspace of both modalities at both stages),
    and the spectrum of R_image^T R_text there: how differently the two modalities rotated, where their data are."""

    image: ProcrustesResult
    text: ProcrustesResult
    angles_deg: np.ndarray
    plane_share: np.ndarray
    geodesic_deg: float
    max_deg: float
    dim: int
    variance_held: float


def joint_rotations(image: tuple[CrossProducts, Gram], text: tuple[CrossProducts, Gram], floor: float = DEFAULT_FLOOR,
                    fitted: tuple[ProcrustesResult, ProcrustesResult] | None = None) -> JointRotations:
    """Fit the image and the text rotation in the principal subspace of the four (unit-row) clouds pooled with equal
    weight, then compare them. Directions neither modality uses cannot add an arbitrary angle.

    ``fitted``: the two modalities' own uncentred fits, reused when they and the shared subspace all span the whole
    space (then the fits are the same rotations)."""
    with small_linalg():
        parts = [pair_moments(p, gb, centred=False) for p, gb in (image, text)]
        moment = (parts[0][3] + parts[1][3]) / 2.0
        basis, held = principal_basis(moment, floor)
        if fitted is not None and all(_is_whole_space(b) for b in (basis, fitted[0].basis, fitted[1].basis)):
            fi, ft = fitted
        else:
            fi, ft = (fit_in_subspace(g, c, nd, moment, basis, held, False, spectrum=False) for g, c, nd, _ in parts)
        planes, geo, mx, shares = subspace_spectrum(fi.rotation.T @ ft.rotation, moment, basis)
    return JointRotations(fi, ft, planes, shares, geo, mx, basis.shape[1], held)


def rigid_residual_angles(a: np.ndarray, b: np.ndarray, fit: ProcrustesResult, block: int = _BLOCK) -> np.ndarray:
    """Per-item angle (degrees) between the rigidly rotated old position a_i R and the new position b_i (unit rows):
    what the best rotation leaves unexplained. R acts only in the fit's basis, so a R = a + (a U)(R_r - I) U^T."""
    d, r = fit.basis.shape
    low_rank = 3 * r < d  # a U (R_r - I) U^T costs 2 n d r + n r^2 multiply-adds, a R costs n d^2
    basis = fit.basis.astype(np.float32)
    f = (fit.rotation - np.eye(r)).astype(np.float32)
    full = fit.R.astype(np.float32)
    out = np.empty(a.shape[0])
    for s in range(0, a.shape[0], block):
        x = np.asarray(a[s : s + block], dtype=np.float32)
        moved = x + ((x @ basis) @ f) @ basis.T if low_rank else x @ full
        out[s : s + block] = unit_angle_deg(moved, np.asarray(b[s : s + block], dtype=np.float32))
    return out


def rigid_share(rotation_deg: np.ndarray, residual_deg: np.ndarray, min_deg: float = 0.01) -> tuple[np.ndarray, float]:
    """How much of the movement the best rigid rotation explains: per item 1 - (residual / rotation)^2 (NaN for items
    that moved less than ``min_deg``; negative when the rotation moved an item the wrong way), and for the pair
    1 - sum(residual^2) / sum(rotation^2) (1: a pure rotation, alignable by a d x d matrix; 0: a change of shape)."""
    rot, res = np.asarray(rotation_deg, dtype=np.float64), np.asarray(residual_deg, dtype=np.float64)
    moved = rot >= min_deg
    per_item = np.full(rot.shape, np.nan)
    per_item[moved] = 1.0 - (res[moved] / rot[moved]) ** 2
    total = float(np.sum(rot[moved] ** 2))
    pair = 1.0 - float(np.sum(res[moved] ** 2)) / total if total > 0 else float("nan")
    return per_item, pair


def procrustes(a, b, centred: bool = False, normalized: bool = False, floor: float = DEFAULT_FLOOR) -> ProcrustesResult:
    """Fit the proper rotation from stage a to stage b (rows L2-normalised first) in their principal subspace
    (directions with at least ``floor`` of the average variance); ``floor=0`` fits over all d directions."""
    a = a if normalized else as_unit_rows(a, "stage a")
    b = b if normalized else as_unit_rows(b, "stage b")
    check_pair(a, b)
    return procrustes_from_products(cross_products(a, b), gram(b), centred=centred, floor=floor)
