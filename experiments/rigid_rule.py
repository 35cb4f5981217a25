"""Which directions should a rigid-rotation fit use? The alternatives measured side by side (docs/metrics.md).

Rules compared, each giving the geodesic angle, the largest plane angle and the inter-modal rotation:
  all       every one of the d directions (the old default; the empty directions turn arbitrarily)
  share99   the principal subspace of both stages holding 99% of their variance
  share95   ... holding 95%
  floor     directions with at least a tenth of the average direction's variance (the default)
  weighted  all directions, plane angles weighted by the variance each plane carries (an RMS, not a geodesic)

Planted: CLIP-like clouds (spatial_disorder.synthetic.clip_like_cloud: a common mean direction, a power-law
spectrum, d = 96, n = 4,000), the main plane turned by 12 degrees in both modalities, plus isotropic noise per
coordinate at each stage (the truth: 12, 12 and 0 whatever the noise). Real: every run given with --runs,
stage 0 against the last stage, every probe set.

    python experiments/rigid_rule.py                                  # planted only
    python experiments/rigid_rule.py --runs runs/quickstart/finetune runs/quickstart/modx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from spatial_disorder import open_run
from spatial_disorder.atomic import atomic_write_bytes
from spatial_disorder.knn import as_unit_rows
from spatial_disorder.metrics.procrustes import (
    cross_products,
    fit_in_subspace,
    gram,
    pair_moments,
    plane_spectrum,
    principal_basis,
    small_linalg,
)
from spatial_disorder.metrics.rotation import rotation_angles
from spatial_disorder.synthetic import clip_like_cloud, plane_rotation

ROOT = Path(__file__).resolve().parents[1]
RULES = ("all", "share99", "share95", "floor", "weighted")


def share_basis(moment: np.ndarray, share: float) -> tuple[np.ndarray, float]:
    """Leading eigenvectors holding ``share`` of the trace (the alternative rule)."""
    w, v = np.linalg.eigh(moment)
    w, v = np.clip(w[::-1], 0, None), v[:, ::-1]
    cum = np.cumsum(w) / w.sum()
    r = int(np.searchsorted(cum, share - 1e-12) + 1)
    return v[:, :r], float(cum[r - 1])


def basis_for(rule: str, moment: np.ndarray):
    if rule in ("all", "weighted"):
        return principal_basis(moment, 0.0)
    if rule == "floor":
        return principal_basis(moment)
    return share_basis(moment, {"share99": 0.99, "share95": 0.95}[rule])


def summarise(rule: str, fit, moment) -> tuple[float, float]:
    if rule != "weighted":
        return fit.geodesic_deg, fit.max_deg
    w = fit.plane_share / max(fit.plane_share.sum(), 1e-300)
    return float(np.sqrt(np.sum(w * fit.angles_deg**2))), fit.max_deg


def compare_rules(ai, bi, at, bt) -> list[dict]:
    """Geodesic, largest plane and inter-modal angle of one stage pair under every rule."""
    prods = {m: (cross_products(a, b), gram(b)) for m, (a, b) in (("image", (ai, bi)), ("text", (at, bt)))}
    rows = []
    with small_linalg():
        for rule in RULES:
            row = {"rule": rule}
            for m, (p, gb) in prods.items():
                g, c, nd, moment = pair_moments(p, gb, centred=False)
                basis, held = basis_for(rule, moment)
                fit = fit_in_subspace(g, c, nd, moment, basis, held, False)
                row[f"{m}_geodesic_deg"], row[f"{m}_max_deg"] = summarise(rule, fit, moment)
                row[f"{m}_dim"], row[f"{m}_variance_held"] = basis.shape[1], held
            parts = [pair_moments(p, gb, centred=False) for p, gb in prods.values()]
            moment = (parts[0][3] + parts[1][3]) / 2.0
            basis, held = basis_for(rule, moment)
            fi, ft = (fit_in_subspace(g, c, nd, moment, basis, held, False) for g, c, nd, _ in parts)
            planes, geo, mx, shares = plane_spectrum(fi.rotation.T @ ft.rotation, basis.T @ moment @ basis)
            if rule == "weighted":
                w = shares / max(shares.sum(), 1e-300)
                geo = float(np.sqrt(np.sum(w * planes**2)))
            row["intermodal_deg"], row["intermodal_max_deg"] = geo, mx
            row["image_rotation_mean_deg"] = float(rotation_angles(ai, bi, normalized=True).mean())
            row["text_rotation_mean_deg"] = float(rotation_angles(at, bt, normalized=True).mean())
            rows.append(row)
    return rows


def planted(noises=(0.0, 0.005, 0.01, 0.02), theta=12.0, n=4000, d=96, seed=0, plane=(1, 2)) -> pd.DataFrame:
    """``plane``: the principal directions (1 = the largest after the mean) whose plane turns."""
    img, basis = clip_like_cloud(n, d, seed=seed)
    txt = img + 0.3 * clip_like_cloud(n, d, seed=seed + 2, basis=basis)[0] + 0.3 * basis[:, 3]
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    r = plane_rotation(basis[:, plane[0]], basis[:, plane[1]], theta)
    where = "main plane" if plane == (1, 2) else f"plane of directions {plane[0]} and {plane[1]}"
    rng = np.random.default_rng(seed + 1)
    out = []
    for noise in noises:
        def noisy(x, noise=noise):
            y = x + noise * rng.normal(size=x.shape)
            return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)

        ai, bi, at, bt = noisy(img), noisy(img @ r), noisy(txt), noisy(txt @ r)
        moved = float(np.median(rotation_angles(noisy(img @ r), (img @ r).astype(np.float32))))
        for row in compare_rules(ai, bi, at, bt):
            out.append({"case": f"planted {theta:g} deg in the {where}, noise {noise:g} (moves items {moved:.1f} deg)", **row})
    return pd.DataFrame(out)


def real(runs) -> pd.DataFrame:
    out = []
    for path in runs:
        run = open_run(path)
        a, b = run.stages[0], run.stages[-1]
        for probe in run.probes:
            x = {(s, m): as_unit_rows(run.embeddings(s, probe, m), f"{path} {s} {probe} {m}") for s in (a, b) for m in ("image", "text")}
            for row in compare_rules(x[(a, "image")], x[(b, "image")], x[(a, "text")], x[(b, "text")]):
                out.append({"case": f"{Path(path).parent.name}/{Path(path).name} {probe} {a}->{b}", **row})
    return pd.DataFrame(out)


def to_markdown(df: pd.DataFrame) -> str:
    cols = ["case", "rule", "image_geodesic_deg", "image_max_deg", "image_dim", "text_geodesic_deg", "text_max_deg",
            "intermodal_deg", "image_rotation_mean_deg"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df[cols].iterrows():
        lines.append("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def planted_table(df: pd.DataFrame) -> str:
    """Rules as rows, noise levels as columns; each cell image geodesic / largest plane / inter-modal (degrees)."""
    sel = df[df["case"].str.startswith("planted")]
    cases = list(dict.fromkeys(sel["case"]))
    lines = ["| rule | " + " | ".join(c.split(" deg in the ", 1)[1] for c in cases) + " |", "|---|" + "---|" * len(cases)]
    for rule in RULES:
        cells = []
        for c in cases:
            r = sel[(sel["case"] == c) & (sel["rule"] == rule)].iloc[0]
            cells.append(f"{r['image_geodesic_deg']:.1f} / {r['image_max_deg']:.1f} / {r['intermodal_deg']:.1f}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=[], help="run folders to measure (stage 0 against the last stage)")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "rigid_rule")
    args = ap.parse_args(argv)
    parts = [planted(), planted(noises=(0.005,), plane=(8, 9))] + ([real(args.runs)] if args.runs else [])
    df = pd.concat(parts, ignore_index=True)
    atomic_write_bytes(args.out.with_suffix(".csv"), df.to_csv(index=False).encode())
    text = ("# Rigid-rotation rules compared (experiments/rigid_rule.py)\n\nPlanted (image geodesic / largest plane / "
            "inter-modal, degrees; truth 12 / 12 / 0):\n\n" + planted_table(df) + "\nEvery case and rule:\n\n" + to_markdown(df))
    atomic_write_bytes(args.out.with_suffix(".md"), text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
