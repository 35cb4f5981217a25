"""Upgrade without re-indexing, measured on the reference experiment's runs (experiments/reference.py).

For every finished run (``seedS/MODE`` under --work-dir) and every later stage t, the stage-0 model is the
old model and stage t the new one. Per probe set (default: the old and the new domain) the images are split
once (seeded; half calibrate, half are held out, captions follow their image) and, on the held-out items
only: old/old, new/new and cross-model R@1 (new queries against the old index, no map), then the bridged
R@1 of each map (orthogonal and ridge; ``index``: old index carried into the new space, ``query``: new
queries carried into the old space), recovery = bridged / new/new R@1, agreement and the residual share
of the drift the map leaves (1 - residual = the rigid share, for the orthogonal map). At the last stage a
learning curve refits the maps on nested calibration subsets (50, 100, 300 and all held-in images; sizes
above the held-in count are dropped, orthogonal fits with fewer images than dimensions are reported as
under-determined).

Writes ``bridge_reference.csv`` (one row per run, stage, probe and setting), ``bridge_reference_curve.csv``
and ``bridge_reference.md`` (last stage, mean ± 95% t half-width over seeds) into --out.

    python experiments/bridge_reference.py                              # every finished run
    python experiments/bridge_reference.py --modes finetune modx --last-only
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spatial_disorder import open_run  # noqa: E402
from spatial_disorder.atomic import atomic_write_bytes  # noqa: E402
from spatial_disorder.gate.inputs import from_stages  # noqa: E402
from spatial_disorder.metrics.bridge import CURVE_SIZES, evaluate_bridge, learning_curve  # noqa: E402

MODES = ("finetune", "modx", "feature_distill", "joint")
PROBES = ("google_seen", "twitter_seen")
LABELS = {"finetune": "fine-tune", "modx": "Mod-X", "feature_distill": "feature distill", "joint": "joint (replay)"}


def find_runs(work: Path, modes=MODES, seeds=None) -> list[tuple[int, str, Path]]:
    """(seed, mode, path) of every run with at least two stages, in seed then mode order."""
    found = []
    for seed_dir in sorted(work.glob("seed*")):
        tail = seed_dir.name[4:].split("-")[0]
        if not tail.isdigit() or (seeds is not None and int(tail) not in seeds):
            continue
        for mode in modes:
            path = seed_dir / mode
            if (path / "run.json").is_file():
                try:
                    if len(open_run(path, check_sha256=False).stages) >= 2:
                        found.append((int(tail), mode, path))
                except Exception as exc:  # a run still being written: skip it, say so
                    print(f"skip {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return found


def measure_run(seed: int, mode: str, path: Path, probes, last_only: bool, fraction: float, split_seed: int):
    run = open_run(path, check_sha256=False)
    probes = [p for p in probes if p in run.probes]
    stages = run.stages[-1:] if last_only else run.stages[1:]
    rows, curves = [], []
    for stage in stages:
        for c in from_stages(run, 0, stage, probes):
            ids = {"seed": seed, "mode": mode, "stage_a": run.stages[0], "stage_b": stage, "last_stage": run.stages[-1], "probe": c.probe}
            ev = evaluate_bridge(c.reference, c.candidate, c.text_to_image, fraction=fraction, seed=split_seed,
                                 default=("", ""))  # a map the split is too small for is skipped, not fatal
            rows.append(ev.table.assign(**ids))
            if stage == run.stages[-1]:
                lc = learning_curve(c.reference, c.candidate, c.text_to_image, sizes=CURVE_SIZES, fraction=fraction,
                                    seed=split_seed, directions=("index", "query"))
                curves.append(lc.assign(**ids))
    return rows, curves


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (NaN half-width for one value)."""
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def fmt(values, scale: float = 1.0, digits: int = 1) -> str:
    m, h = mean_ci(np.asarray(values, dtype=float) * scale)
    if not np.isfinite(m):
        return "-"
    return f"{m:.{digits}f}" + (f" ± {h:.{digits}f}" if np.isfinite(h) else "")


def markdown(table: pd.DataFrame, curve: pd.DataFrame, fraction: float) -> str:
    last = table[table["stage_b"] == table["last_stage"]]
    runs = last.groupby("mode")["seed"].nunique().to_dict()
    out = ["# Upgrade without re-indexing: the bridge on the reference experiment", "",
           f"Old model = stage 0, new model = the last stage of each run; runs per mode: "
           f"{', '.join(f'{LABELS.get(m, m)} {n}' for m, n in runs.items())} (seeds "
           f"{', '.join(str(s) for s in sorted(last['seed'].unique()))}). Per probe set, {fraction:.0%} of the images "
           "(seeded, the same items for every mode) calibrate the maps; every number is on the held-out rest. "
           "R@1 in percent, mean ± half-width of the 95% t-interval over seeds; recovery = bridged R@1 / new/new R@1; "
           "agreement = share of held-out items whose carried vector finds its own re-embedded vector first; "
           "rigid share = 1 - residual share of the drift after the orthogonal map (images / captions). "
           "Made by `python experiments/bridge_reference.py`; formulas in docs/bridge.md.", ""]
    settings = [("old/old", "old/old"), ("new/new", "new/new (re-embed)"), ("cross", "cross (no map)"),
                ("bridge orthogonal index", "orthogonal, index"), ("bridge orthogonal query", "orthogonal, query"),
                ("bridge ridge index", "ridge, index"), ("bridge ridge query", "ridge, query")]
    for probe in sorted(last["probe"].unique()):
        sub = last[last["probe"] == probe]
        out += [f"## Probe `{probe}` (last stage)", "",
                "| mode | setting | t2i R@1 | i2t R@1 | recovery t2i | recovery i2t | agreement img / txt | rigid share img / txt |",
                "|---|---|---|---|---|---|---|---|"]
        for mode in [m for m in MODES if m in set(sub["mode"])]:
            for key, label in settings:
                s = sub[(sub["mode"] == mode) & (sub["setting"] == key)]
                if s.empty:
                    continue
                rec = [fmt(s.get(f"{d}_R@1_recovery", pd.Series(dtype=float)), 100) + ("%" if key != "old/old" and key != "new/new" else "")
                       for d in ("t2i", "i2t")]
                agr = (f"{fmt(s['image_agreement'], digits=3)} / {fmt(s['text_agreement'], digits=3)}" if "bridge" in key else "")
                rig = (f"{fmt(1 - s['image_residual_frac'], digits=2)} / {fmt(1 - s['text_residual_frac'], digits=2)}"
                       if key == "bridge orthogonal index" else "")
                rec = ["", ""] if key in ("old/old", "new/new") else rec
                out.append(f"| {LABELS.get(mode, mode)} | {label} | {fmt(s['t2i_R@1'])} | {fmt(s['i2t_R@1'])} | {rec[0]} | {rec[1]} | {agr} | {rig} |")
        out.append("")
        out += _combined(sub, probe)
    if not curve.empty:
        out += ["## Learning curve (last stage): recovery of new/new R@1 against calibration images", "",
                "| probe | mode | map | direction | images | recovery t2i | recovery i2t | agreement img / txt |", "|---|---|---|---|---|---|---|---|"]
        for (probe, mode, method, direction, n), g in curve.groupby(["probe", "mode", "method", "direction", "calibration_images"], sort=True):
            if g["t2i_R@1_recovery"].isna().all():
                out.append(f"| {probe} | {LABELS.get(mode, mode)} | {method} | {direction} | {n} | under-determined ({n} images < dimension) | | |")
                continue
            out.append(f"| {probe} | {LABELS.get(mode, mode)} | {method} | {direction} | {n} | {fmt(g['t2i_R@1_recovery'], 100)}% | "
                       f"{fmt(g['i2t_R@1_recovery'], 100)}% | {fmt(g['image_agreement'], digits=3)} / {fmt(g['text_agreement'], digits=3)} |")
        out.append("")
    return "\n".join(out) + "\n"


def _combined(sub: pd.DataFrame, probe: str) -> list[str]:
    """Does Mod-X plus a bridge beat either alone? Fine-tune + bridge, Mod-X without a map, Mod-X + bridge (orthogonal, index)."""
    if not {"finetune", "modx"} <= set(sub["mode"]):
        return []

    def r1(mode, setting, d):
        return sub[(sub["mode"] == mode) & (sub["setting"] == setting)].sort_values("seed")[f"{d}_R@1"].to_numpy()

    lines = [f"Mod-X plus a bridge against either alone (`{probe}`, orthogonal map, index direction, R@1 %):", "",
             "| direction | fine-tune + bridge | Mod-X, no map | Mod-X + bridge | fine-tune re-embedded | Mod-X re-embedded |",
             "|---|---|---|---|---|---|"]
    for d in ("t2i", "i2t"):
        lines.append(f"| {d} | {fmt(r1('finetune', 'bridge orthogonal index', d))} | {fmt(r1('modx', 'cross', d))} | "
                     f"{fmt(r1('modx', 'bridge orthogonal index', d))} | {fmt(r1('finetune', 'new/new', d))} | {fmt(r1('modx', 'new/new', d))} |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=ROOT / "experiments" / "results" / "runs")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--probes", nargs="+", default=list(PROBES))
    p.add_argument("--fit-fraction", type=float, default=0.5)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--last-only", action="store_true", help="only stage 0 -> the last stage (default: every later stage)")
    args = p.parse_args(argv)
    runs = find_runs(args.work_dir, args.modes, args.seeds)
    if not runs:
        print(f"no finished runs under {args.work_dir}", file=sys.stderr)
        return 1
    t = time.perf_counter()
    rows, curves = [], []
    for seed, mode, path in runs:
        r, c = measure_run(seed, mode, path, args.probes, args.last_only, args.fit_fraction, args.split_seed)
        rows += r
        curves += c
        print(f"seed {seed} {mode}: {path} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    table = pd.concat(rows, ignore_index=True)
    curve = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    lead = ["seed", "mode", "stage_a", "stage_b", "probe"]
    table = table[lead + [c for c in table.columns if c not in lead]]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "bridge_reference.csv", table.to_csv(index=False).encode())
    if not curve.empty:
        curve = curve[lead + [c for c in curve.columns if c not in lead]]
        atomic_write_bytes(args.out / "bridge_reference_curve.csv", curve.to_csv(index=False).encode())
    text = markdown(table, curve, args.fit_fraction)
    atomic_write_bytes(args.out / "bridge_reference.md", text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
