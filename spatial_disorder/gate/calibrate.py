"""Propose thresholds from a null band: how much the metrics move in comparisons known to be acceptable.

The band of each metric is the spread of its value over item subsamples (a subsampling bootstrap: each
replicate keeps ``fraction`` of the images, without replacement, with all their captions) of every
known-good comparison (the one given, plus those against ``--null`` runs trained with another seed).
A proposed threshold sits one band width beyond the worse edge of everything known to be good (the band, the
value of every full comparison, and the value of identical inputs, reference against itself, where a model
checked against itself must pass): ``max = hi + slack * (hi - lo)`` for metrics that are worse when higher,
``min = lo - slack * (hi - lo)`` for those worse when lower (the width is that of the band, at least 0.1% of its
magnitude; bounds are rounded outwards to six significant digits). A bound is clipped to the metric's range and
dropped when it can never bind (at or beyond the end of the range, e.g. ``min = 0`` on a share) or when identical
inputs have no value for the metric (a NaN fails every check).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .inputs import Comparison, analyse
from .thresholds import Threshold

BAND_COLUMNS = ["probe", "modality", "metric", "observed", "lo", "hi", "n", "observed_min", "observed_max", "identity_min", "identity_max"]


def bookkeeping() -> set[str]:
    """Bookkeeping values, not quality measures (registry flag ``calibrate`` off): never proposed as thresholds."""
    from ..metrics.registry import METRICS

    return {name for name, info in METRICS.items() if not info.calibrate}


def subsample(c: Comparison, fraction: float, rng: np.random.Generator) -> Comparison:
    """Keep a random ``fraction`` of the images (and their captions) in both reference and candidate."""
    mods = set(c.reference)
    n_img = c.reference["image"].shape[0] if "image" in mods else c.reference["text"].shape[0]
    keep = np.sort(rng.choice(n_img, size=max(2, int(round(fraction * n_img))), replace=False))
    ref, cand, t2i = {}, {}, None
    if "image" in mods:
        ref["image"], cand["image"] = c.reference["image"][keep], c.candidate["image"][keep]
    if "text" in mods:
        if c.text_to_image is not None and "image" in mods:
            remap = np.full(n_img, -1)
            remap[keep] = np.arange(len(keep))
            rows = np.flatnonzero(remap[c.text_to_image] >= 0)
            t2i = remap[c.text_to_image[rows]]
        else:
            rows = keep
        ref["text"], cand["text"] = c.reference["text"][rows], c.candidate["text"][rows]
    return Comparison(c.probe, ref, cand, t2i, c.label)


def identical(c: Comparison, side: str = "reference") -> Comparison:
    """One side of a comparison against itself: the case a model checked against itself must pass."""
    x = getattr(c, side)
    return Comparison(c.probe, x, x, c.text_to_image, f"{side} -> {side}")


def null_band(groups: list[list[Comparison]], replicates: int = 20, fraction: float = 0.8, seed: int = 0, k: int = 10,
              fast: bool = False, backend="auto", quantiles=(0.025, 0.975)) -> pd.DataFrame:
    """Per (probe, modality, metric): observed value(s), the band [lo, hi] over all subsamples of all groups, and the
    range of the full comparisons (``observed_min``/``max``) and of identical inputs (``identity_min``/``max``, NaN
    when identical inputs give no value)."""
    rng = np.random.default_rng(seed)
    values = []
    for g, comps in enumerate(groups):
        full = analyse(comps, k=k, fast=fast, backend=backend, seed=seed)
        full["source"], full["replicate"] = g, -1
        values.append(full)
        for side in ("reference", "candidate"):
            same = analyse([identical(c, side) for c in comps], k=k, fast=fast, backend=backend, seed=seed)
            same["source"], same["replicate"] = g, -2
            values.append(same)
        for r in range(replicates):
            sub = [subsample(c, fraction, rng) for c in comps]
            s = analyse(sub, k=min(k, _min_items(sub) - 1), fast=fast, backend=backend, seed=seed)
            s["source"], s["replicate"] = g, r
            values.append(s)
    allv = pd.concat(values, ignore_index=True)
    allv = allv[~allv["metric"].isin(bookkeeping())]
    rows = []
    for (probe, mod, metric), grp in allv.groupby(["probe", "modality", "metric"], sort=False):
        same = grp.loc[grp["replicate"] == -2, "value"].astype(float).to_numpy()
        grp = grp[grp["replicate"] != -2]
        v = grp["value"].astype(float).to_numpy()
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        obs = grp.loc[grp["replicate"] == -1, "value"].astype(float).to_numpy()
        nan_same = not len(same) or not np.isfinite(same).all()
        rows.append({"probe": probe, "modality": mod, "metric": metric, "observed": float(obs.mean()),
                     "lo": float(np.quantile(v, quantiles[0])), "hi": float(np.quantile(v, quantiles[1])), "n": int(len(v)),
                     "observed_min": float(np.min(obs)), "observed_max": float(np.max(obs)),
                     "identity_min": np.nan if nan_same else float(same.min()), "identity_max": np.nan if nan_same else float(same.max())})
    return pd.DataFrame(rows, columns=BAND_COLUMNS)


def _min_items(comps: list[Comparison]) -> int:
    return min(min(a.shape[0] for a in c.reference.values()) for c in comps)


def _round(x: float, up: bool, digits: int = 6) -> float:
    """Round to ``digits`` significant digits away from the band (so rounding never tightens a bound)."""
    if x == 0 or not np.isfinite(x):
        return float(x)
    step = 10.0 ** (np.floor(np.log10(abs(x))) - (digits - 1))
    q = x / step
    q = np.round(q) if abs(q - np.round(q)) < 1e-6 else (np.ceil(q) if up else np.floor(q))  # float noise is not a digit
    return float(f"{q * step:.{digits + 2}g}")


def propose(band: pd.DataFrame, slack: float = 1.0, severity: str = "fail", skipped: list | None = None) -> list[Threshold]:
    """Thresholds ``slack`` band widths beyond the worse edge of the known-good values of each metric.

    Metrics with no bound that could both bind and pass every known-good value are left out; with ``skipped``
    (a list), each is appended to it as ``(probe, modality, metric, reason)``.
    """
    from ..metrics.registry import METRICS

    out = []
    for row in band.itertuples(index=False):
        info = METRICS.get(row.metric)
        if info is None or row.metric in bookkeeping():
            continue
        bound, reason = _bound(row, info.worse_when, slack)
        if bound is None:
            if skipped is not None:
                skipped.append((row.probe, row.modality, row.metric, reason))
            continue
        out.append(Threshold(row.metric, probe=row.probe, modality=row.modality, severity=severity, **bound))
    return out


def _bound(row, worse_when: str, slack: float) -> tuple[dict | None, str]:
    """The proposed bound of one band row (``{"max": x}`` or ``{"min": x}``), or None and why none is proposed."""
    from ..metrics.registry import value_range

    known = {}
    for what, cols in (("the calibrated comparison", ("observed_min", "observed_max")), ("identical inputs", ("identity_min", "identity_max"))):
        if all(hasattr(row, c) for c in cols):
            vals = [float(getattr(row, c)) for c in cols]
            if not all(np.isfinite(vals)):
                return None, f"{what} give(s) no value (NaN), which fails any bound"
            known[what] = vals
    good = [row.lo, row.hi] + [v for vals in known.values() for v in vals]
    # a band of zero width (a metric that does not vary across subsamples) still gets 0.1% of headroom
    width = max(row.hi - row.lo, 1e-3 * max(abs(row.hi), abs(row.lo)), 1e-9)
    lo_end, hi_end = value_range(row.metric)
    if worse_when == "higher":
        bound = _round(min(max(good) + slack * width, hi_end), up=True)
        if bound >= hi_end:
            return None, f"max {bound:g} could never bind (the metric is at most {hi_end:g})"
        return {"max": bound}, ""
    bound = _round(max(min(good) - slack * width, lo_end), up=False)
    if bound <= lo_end:
        return None, f"min {bound:g} could never bind (the metric is at least {lo_end:g})"
    return {"min": bound}, ""
