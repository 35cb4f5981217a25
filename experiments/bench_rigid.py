"""Per-pair cost of the rigid-rotation family, before and after fitting in the principal subspace (one run).

"before" is the former fit over all d directions (SVD of A^T B, the symmetric eigenvalues of R for the spectrum,
uncentred and centred, then the spectrum of R_image^T R_text); "after" is today's (the pooled moment's
eigenvectors, a proper rotation in the subspace, plane variance shares, the joint subspace for the inter-modal
rotation). Both start from the same blocked products (A^T A, A^T (B - A); their cost, shared, is reported apart),
and are interleaved, so machine load hits both alike. The per-item rigid residual (one pass over the items) is
timed separately.

    python experiments/bench_rigid.py --n 10000 --d 512 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from spatial_disorder.metrics.procrustes import (
    cross_products,
    gram,
    joint_rotations,
    procrustes_from_products,
    rigid_residual_angles,
    small_linalg,
    spectrum_summary,
)
from spatial_disorder.synthetic import clip_like_cloud, plane_rotation


def before(prods: dict) -> None:
    """The former fixed cost: for each modality an SVD and a symmetric eigenproblem per fit (uncentred, centred)."""
    rs = {}
    with small_linalg():
        for m, (p, _) in prods.items():
            for centred in (False, True):
                g, c, n = p.gram.g, p.c, p.gram.n
                if centred:
                    ma, md = p.gram.colsum / n, p.dsum / n
                    g, c = g - n * np.outer(ma, ma), c - n * np.outer(ma, md)
                u, _, vt = np.linalg.svd(g + c)
                r = u @ vt
                e = r - np.eye(len(r))
                float(np.sum(e * (g @ e)) - 2.0 * np.sum(e * c))
                spectrum_summary(r)
                if not centred:
                    rs[m] = r
        spectrum_summary(rs["image"].T @ rs["text"])


def after(prods: dict) -> None:
    for pg in prods.values():
        for centred in (False, True):
            procrustes_from_products(*pg, centred=centred)
    joint_rotations(prods["image"], prods["text"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    img, basis = clip_like_cloud(args.n, args.d, seed=0)
    txt, _ = clip_like_cloud(args.n, args.d, seed=1, basis=basis)
    r = plane_rotation(basis[:, 1], basis[:, 2], 15.0)
    rng = np.random.default_rng(2)
    stages = {}
    for m, x in (("image", img), ("text", txt)):
        a = x + 0.005 * rng.normal(size=x.shape)
        b = x @ r + 0.005 * rng.normal(size=x.shape)
        stages[m] = tuple((y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32) for y in (a, b))
    t = time.perf_counter()
    prods = {m: (cross_products(a, b), gram(b)) for m, (a, b) in stages.items()}
    products_s = time.perf_counter() - t
    times = {"before": [], "after": []}
    for _ in range(args.repeats):
        for name, fn in (("before", before), ("after", after)):
            t = time.perf_counter()
            fn(prods)
            times[name].append(time.perf_counter() - t)
    fit = procrustes_from_products(*prods["image"])
    t = time.perf_counter()
    rigid_residual_angles(*stages["image"], fit)
    residual_s = time.perf_counter() - t
    b, a = np.median(times["before"]), np.median(times["after"])
    print(f"n = {args.n}, d = {args.d}; per stage pair, both modalities (median of {args.repeats}, interleaved):")
    print(f"  shared blocked products: {products_s:.2f} s")
    print(f"  fixed d x d cost before: {b:.3f} s   after: {a:.3f} s   ratio after/before: {a / b:.2f}")
    print(f"  per-item rigid residual (one modality): {residual_s:.3f} s")
    print(f"  subspace: {fit.dim} of {args.d} directions, {100 * fit.variance_held:.1f}% of the variance")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
