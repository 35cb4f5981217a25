"""Reference experiment on the emoji-styles benchmark: finetune, Mod-X, feature distillation and joint, over seeds.

Per seed, one stage-0 model is trained on the old domain (Google style, train concepts) and shared by every
mode of that seed (``stage0=null model.pretrained=<checkpoint>``); each mode then trains on the new domain
(Twitter style, train concepts) in five random slices (slice seed = the seed). Every run is analysed with
``spatial_disorder.analysis.analyze_run``; the results table (mean and 95% t-interval over seeds per mode)
goes to ``experiments/results/`` and the reference figures to ``figures/``.

    python experiments/reference.py                       # 3 seeds x 4 modes, then the table and figures
    python experiments/reference.py --seeds 0 --modes finetune modx --set train.epochs=1
    python experiments/reference.py --report-only         # rebuild the table and figures from finished runs

Runs whose directory holds every stage are skipped, so the command can be rerun after an interruption
(an unfinished run is resumed from its last checkpoint).

An importable module (``from experiments import reference``): configs (``stage0_config``, ``mode_config``),
runs (``train_run``), analysis (``analyse``; forgetting and BWT from ``spatial_disorder.metrics.continual``),
the results table (``summarise``, ``paired_differences``, ``markdown_table``) and ``run_experiment``; ``main``
only parses the command line. Figures: ``experiments.reference_figures``; statistics: ``experiments.stats``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the ``experiments`` package importable
    sys.path.insert(0, str(ROOT))

from experiments.runlock import take_lock  # noqa: E402
from experiments.stats import t_interval  # noqa: E402

DEFAULT_CONFIG = ROOT / "experiments" / "configs" / "emoji_reference.yaml"
DEFAULT_RESULTS = ROOT / "experiments" / "results"
DEFAULT_FIGURES = ROOT / "figures"
MODES = ("finetune", "modx", "feature_distill", "joint")
OLD, NEW = "google_seen", "twitter_seen"
ANALYSIS_VERSION = 2  # 2: rigid rotation fitted in the principal subspace; rigid share
MODE_LABELS = {"finetune": "fine-tune", "modx": "Mod-X", "feature_distill": "feature distill", "joint": "joint (replay)"}
# Okabe-Ito colour-blind-safe palette
COLOURS = {"finetune": "#D55E00", "modx": "#0072B2", "feature_distill": "#009E73", "joint": "#CC79A7"}
MARKERS = {"finetune": "o", "modx": "s", "feature_distill": "^", "joint": "D"}

# Columns of the results table: (column, label, unit). R@1 and flips in percent, angles in degrees.
METRICS = [
    ("old_r1_i2t", "old-domain R@1 i2t (last)", "%"),
    ("old_r1_t2i", "old-domain R@1 t2i (last)", "%"),
    ("new_r1_i2t", "new-domain R@1 i2t (last)", "%"),
    ("new_r1_t2i", "new-domain R@1 t2i (last)", "%"),
    ("forget_first_i2t", "forgetting first-last i2t", "pp"),
    ("forget_first_t2i", "forgetting first-last t2i", "pp"),
    ("forget_max_i2t", "forgetting best-last i2t", "pp"),
    ("forget_max_t2i", "forgetting best-last t2i", "pp"),
    ("bwt_i2t", "BWT i2t", "pp"),
    ("bwt_t2i", "BWT t2i", "pp"),
    ("rotation_image_deg", "rotation image (stage 0 -> last)", "deg"),
    ("rotation_text_deg", "rotation text (stage 0 -> last)", "deg"),
    ("knn_overlap_image", "kNN overlap image (k=10)", "0-1"),
    ("knn_overlap_text", "kNN overlap text (k=10)", "0-1"),
    ("procrustes_angle_image_deg", "rigid rotation image (geodesic, principal subspace)", "deg"),
    ("procrustes_angle_text_deg", "rigid rotation text (geodesic, principal subspace)", "deg"),
    ("rigid_share_image", "rigid share of the image movement", "0-1"),
    ("rigid_share_text", "rigid share of the text movement", "0-1"),
    ("rigid_residual_image_deg", "image movement left after the best rotation", "deg"),
    ("rigid_residual_text_deg", "text movement left after the best rotation", "deg"),
    ("paired_angle_change_deg", "paired-angle change", "deg"),
    ("flips_i2t_lost", "flips lost i2t", "%"),
    ("flips_t2i_lost", "flips lost t2i", "%"),
    ("intermodal_rotation_deg", "inter-modal rotation", "deg"),
    ("old_test_r1_t2i", "old-domain unseen concepts R@1 t2i (last)", "%"),
    ("new_test_r1_t2i", "new-domain unseen concepts R@1 t2i (last)", "%"),
]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- statistics ---------------------------------------------------------------------------------------


def summarise(rows: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per mode and metric: n, mean, 95% CI (t-interval over seeds). ``rows``: one row per mode x seed."""
    metrics = [m for m, _, _ in METRICS] if metrics is None else list(metrics)
    out = []
    modes = [m for m in MODES if m in set(rows["mode"])] + sorted(set(rows["mode"]) - set(MODES))
    for mode in modes:
        part = rows[rows["mode"] == mode]
        for metric in metrics:
            if metric not in part.columns:
                continue
            mean, low, high, n = t_interval(part[metric].tolist())
            out.append({"mode": mode, "metric": metric, "n": n, "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(out, columns=["mode", "metric", "n", "mean", "ci_low", "ci_high"])


def paired_differences(rows: pd.DataFrame, mode: str, baseline: str, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """``mode`` minus ``baseline`` per seed (same stage-0 model and slices), then mean and 95% t-interval over seeds."""
    metrics = [m for m, _, _ in METRICS] if metrics is None else list(metrics)
    a = rows[rows["mode"] == mode].set_index("seed")
    b = rows[rows["mode"] == baseline].set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    out = []
    for metric in metrics:
        if metric not in a.columns or metric not in b.columns:
            continue
        diff = (a.loc[seeds, metric].astype(float) - b.loc[seeds, metric].astype(float)).tolist()
        mean, low, high, n = t_interval(diff)
        out.append({"mode": f"{mode} - {baseline}", "metric": metric, "n": n, "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(out, columns=["mode", "metric", "n", "mean", "ci_low", "ci_high"])


def markdown_table(summary: pd.DataFrame, metrics=METRICS) -> str:
    """Metrics as rows, modes as columns, cells ``mean ± half-width`` (half-width of the 95% CI)."""
    modes = list(dict.fromkeys(summary["mode"]))
    head = "| metric | unit | " + " | ".join(_mode_label(m) for m in modes) + " |"
    lines = [head, "|---|---|" + "---|" * len(modes)]
    for metric, label, unit in metrics:
        cells = []
        for mode in modes:
            s = summary[(summary["mode"] == mode) & (summary["metric"] == metric)]
            if s.empty or not math.isfinite(s["mean"].iloc[0]):
                cells.append("")
                continue
            r = s.iloc[0]
            digits = 3 if unit == "0-1" else 1
            half = (r["ci_high"] - r["ci_low"]) / 2
            cells.append(f"{r['mean']:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{r['mean']:.{digits}f}")
        if any(cells):
            lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mode_label(mode: str) -> str:
    if " - " in mode:
        a, b = mode.split(" - ", 1)
        return f"{MODE_LABELS.get(a, a)} − {MODE_LABELS.get(b, b)} (paired)"
    return MODE_LABELS.get(mode, mode)


# --- configs and runs ---------------------------------------------------------------------------------


def load(config_path: Path, overrides: Sequence[str]) -> dict:
    from modx.config import load_config

    return load_config(config_path, list(overrides))


def base_overrides(captions: Path, user: Sequence[str]) -> list[str]:
    return [f"datasets.emoji.path={captions}", *user]


def stage0_config(config_path: Path, over: Sequence[str], seed: int, out: Path) -> dict:
    cfg = load(config_path, [*over, f"seed={seed}", f"output={out}"])
    cfg["phases"] = None
    return cfg


def mode_config(config_path: Path, over: Sequence[str], seed: int, mode: str, ckpt: Path, out: Path) -> dict:
    """A mode's config: the seed's stage-0 checkpoint as the initial model, slices seeded by the seed.

    ``joint`` gets explicit phase lists (stage-0 images + slice 1, slice 2, ...): with ``stage0=null`` the
    runner's union for joint holds only the phases, so the old-domain data is put into the first phase.
    """
    from modx.config import validate

    run_over = [f"seed={seed}", f"output={out}", "stage0=null", f"model.pretrained={ckpt}", f"train.mode={mode}"]
    cfg = load(config_path, [*over, *run_over])
    if cfg["phases"].get("random_slices") is not None:
        cfg["phases"]["slice_seed"] = seed
    if mode == "joint":
        full = load(config_path, [*over, f"seed={seed}"])
        if cfg["phases"].get("random_slices") is not None:
            full["phases"]["slice_seed"] = seed
        old_ids, phase_ids = phase_image_ids(full)
        cfg["phases"] = {"dataset": full["stage0"]["dataset"], "lists": [old_ids + phase_ids[0], *phase_ids[1:]]}
    return validate(cfg)


def phase_image_ids(cfg: dict) -> tuple[list[str], list[list[str]]]:
    """Image ids of stage 0 and of every continual phase of a config with ``stage0`` set."""
    from modx.plan import Sources, build_phases

    sources = Sources(cfg["datasets"])
    old = sources.select(cfg["stage0"], "stage0")
    phases = build_phases(cfg["phases"], sources)
    return list(pd.unique(old["image_id"])), [list(pd.unique(p.table["image_id"])) for p in phases]


def run_dir(work: Path, seed: int, mode: str, stage0_from: int | None) -> Path:
    """``seedS/MODE``; with a shared stage-0 model from another seed: ``seedS-stage0fromR/MODE``."""
    if stage0_from is None or stage0_from == seed:
        return work / f"seed{seed}" / mode
    return work / f"seed{seed}-stage0from{stage0_from}" / mode


def run_state(path: Path, n_stages: int) -> str:
    """'complete' (every stage written), 'partial' (a run exists) or 'missing'."""
    from spatial_disorder import open_run

    if not (path / "run.json").is_file():
        return "partial" if path.exists() and any(path.iterdir()) else "missing"
    try:
        stages = open_run(path, check_sha256=False).stages
    except Exception:
        return "partial"
    return "complete" if len(stages) >= n_stages else "partial"


def train_run(cfg: dict, n_stages: int, label: str, wait: bool = True) -> Path | None:
    """Train (or resume, or skip when complete) one run; None when another process holds it and not ``wait``."""
    from modx.runner import train

    out = Path(cfg["output"])
    lock = take_lock(out, label, wait, say)
    if lock is None:
        return None
    try:
        return _train_locked(cfg, out, n_stages, label, train)
    finally:
        lock.unlink(missing_ok=True)


def _train_locked(cfg: dict, out: Path, n_stages: int, label: str, train) -> Path:
    state = run_state(out, n_stages)
    if state == "complete":
        say(f"{label}: complete, skipped ({out})")
        return out
    say(f"{label}: {'resuming' if state == 'partial' else 'training'} -> {out}")
    t = time.perf_counter()
    train(cfg, resume=state == "partial", progress=False)
    say(f"{label}: done in {time.perf_counter() - t:.0f} s; {brief_scores(out)}")
    return out


def brief_scores(path: Path) -> str:
    from spatial_disorder import open_run

    run = open_run(path, check_sha256=False)
    parts = []
    for stage in (run.stages[0], run.stages[-1]) if len(run.stages) > 1 else run.stages[:1]:
        r = run.stage_meta(stage).get("retrieval", {})
        vals = [f"{p} {r[p].get('i2t_R@1', float('nan')):.1f}/{r[p].get('t2i_R@1', float('nan')):.1f}" for p in (OLD, NEW) if p in r]
        parts.append(f"{stage}: " + ", ".join(vals))
    return "R@1 i2t/t2i " + "; ".join(parts)


# --- analysis -----------------------------------------------------------------------------------------


def acc_by_group(res, stages, probe, groups: dict) -> dict:
    """R@1 (percent) per stage and direction of the probe's items grouped by ``groups`` (image id -> group)."""
    first = stages[0]
    out = {}
    for stage in stages:
        a, b = (first, stages[1]) if stage == first else (first, stage)
        for modality, direction in (("image", "i2t"), ("text", "t2i")):
            f = res.item_frame(a, b, probe, modality)
            rank = f["rank_a"] if stage == first else f["rank_b"]
            key = f["id"] if modality == "image" else f["image_id"]
            g = key.map(groups)
            for group, hits in (rank == 1)[g.notna()].groupby(g[g.notna()]):
                out[(stage, direction, group)] = 100.0 * float(hits.mean())
    return out


def bwt(res, stages, retrieval: pd.DataFrame, slice_of: dict) -> dict:
    """Backward transfer (Lopez-Paz and Ranzato) from ``spatial_disorder.metrics.continual``: mean over tasks
    k < T of acc[T, k] - acc[k, k].

    Task 0 is the old domain (the old-domain probe, learned at stage 0); task k >= 1 is slice k, measured on
    the new-domain probe's items that belong to slice k (learned at stage k). Negative = forgetting.
    """
    from spatial_disorder.metrics.continual import continual_table

    grouped = acc_by_group(res, stages, NEW, slice_of)
    out = {}
    for direction in ("i2t", "t2i"):
        r = retrieval[(retrieval["probe"] == OLD) & (retrieval["direction"] == direction) & (retrieval["metric"] == "R@1")]
        old = dict(zip(r["stage"], r["value"]))
        acc = {"old": [old[s] for s in stages]}
        learned_at = {"old": 0}
        for k in range(1, len(stages)):
            column = [grouped.get((s, direction, k)) for s in stages]
            if all(v is not None for v in column):  # a slice with no probe items has no task score
                acc[f"slice{k}"], learned_at[f"slice{k}"] = column, k
        table = continual_table(pd.DataFrame(acc, index=stages), learned_at)
        out[f"bwt_{direction}"] = float(table[(table["probe"] == "all") & (table["quantity"] == "bwt")]["value"].iloc[0])
    return out


def analyse(path: Path, mode: str, seed: int, slice_of: dict) -> tuple[dict, pd.DataFrame]:
    """One row of the results table and the per-stage R@1 curves of a finished run (cached in the run)."""
    from spatial_disorder import open_run
    from spatial_disorder.analysis import analyze_run
    from spatial_disorder.atomic import atomic_write_json

    cache = path / "reference_analysis.json"
    if cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("version") == ANALYSIS_VERSION:
            return data["row"], pd.DataFrame(data["curves"])
    run = open_run(path)
    res = analyze_run(run, k=10)
    stages = list(run.stages)
    first, last = stages[0], stages[-1]
    ret = res.retrieval
    r1 = ret[ret["metric"] == "R@1"]

    def score(probe, direction, stage=last):
        s = r1[(r1["probe"] == probe) & (r1["direction"] == direction) & (r1["stage"] == stage)]
        return float(s["value"].iloc[0]) if len(s) else float("nan")

    def cont(quantity, direction):
        c = res.continual
        s = c[(c["metric"] == "R@1") & (c["probe"] == OLD) & (c["direction"] == direction) & (c["quantity"] == quantity)]
        return float(s["value"].iloc[0])

    def val(metric, modality):
        return res.value(metric, first, last, OLD, modality)

    row = {"mode": mode, "seed": seed, "stages": len(stages)}
    for d in ("i2t", "t2i"):
        row[f"old_r1_{d}"] = score(OLD, d)
        row[f"new_r1_{d}"] = score(NEW, d)
        row[f"old_r1_{d}_stage0"] = score(OLD, d, first)
        row[f"new_r1_{d}_stage0"] = score(NEW, d, first)
        row[f"forget_first_{d}"] = cont("forgetting_first", d)
        row[f"forget_max_{d}"] = cont("forgetting_max", d)
        row[f"flips_{d}_lost"] = 100.0 * val(f"flips_{d}_lost", "cross")
    row.update(bwt(res, stages, ret, slice_of))
    for m in ("image", "text"):
        row[f"rotation_{m}_deg"] = val("rotation_mean_deg", m)
        row[f"knn_overlap_{m}"] = val("knn_overlap_mean", m)
        row[f"procrustes_angle_{m}_deg"] = val("procrustes_angle_deg", m)
        row[f"rigid_share_{m}"] = val("rigid_share", m)
        row[f"rigid_residual_{m}_deg"] = val("rigid_residual_mean_deg", m)
    row["paired_angle_change_deg"] = val("paired_angle_change_mean_deg", "cross")
    row["intermodal_rotation_deg"] = val("intermodal_rotation_deg", "cross")
    row["contrastive_kl"] = val("contrastive_kl", "cross")
    for probe, key in (("google_test", "old_test"), ("twitter_test", "new_test")):
        for d in ("i2t", "t2i"):
            row[f"{key}_r1_{d}"] = score(probe, d) if probe in run.probes else float("nan")
    curves = r1[r1["direction"].isin(["i2t", "t2i"])][["stage", "probe", "direction", "value"]].copy()
    curves["stage_index"] = curves["stage"].map({s: i for i, s in enumerate(stages)})
    rot = res.summary[(res.summary["metric"] == "rotation_mean_deg") & (res.summary["stage_a"] == first) & (res.summary["probe"] == OLD)]
    rot_curves = pd.DataFrame({"stage": rot["stage_b"], "probe": OLD, "direction": "rotation_" + rot["modality"],
                               "value": rot["value"], "stage_index": rot["stage_b"].map({s: i for i, s in enumerate(stages)})})
    curves = pd.concat([curves, rot_curves], ignore_index=True)
    curves.insert(0, "seed", seed)
    curves.insert(0, "mode", mode)
    row = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()}
    atomic_write_json(cache, {"version": ANALYSIS_VERSION, "row": {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                                                   for k, v in row.items()},
                              "curves": curves.to_dict(orient="list")})
    return row, curves


# --- main ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment config (default: configs/emoji_reference.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--data-dir", default=None, help="benchmark cache folder (default: $SD_DATA, else ~/.cache/spatial-disorder)")
    p.add_argument("--captions", type=Path, default=None, help="use this captions.csv (benchmark format) instead of the emoji benchmark")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_RESULTS / "runs", help="where the runs go")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--figures-dir", type=Path, default=DEFAULT_FIGURES)
    p.add_argument("--name", default="reference", help="file stem of the results table (reference.csv, reference.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--report-only", action="store_true", help="no training: analyse the finished runs and write the outputs")
    p.add_argument("--stage0-from", type=int, default=None, metavar="SEED",
                   help="every seed starts from this seed's stage-0 model (seeds then vary only the continual phases)")
    p.add_argument("--stage0-only", action="store_true",
                   help="only train the stage-0 models of the seeds (e.g. in a second process while the first trains the modes)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def captions_path(args) -> Path:
    if args.captions is not None:
        if not args.captions.is_file():
            raise SystemExit(f"error: {args.captions}: captions file not found")
        return args.captions.resolve()
    from modx.benchmarks import ensure_emoji_dataset

    return ensure_emoji_dataset(args.data_dir) / "captions.csv"


def slice_plans(config: Path, over: Sequence[str], seeds: Sequence[int]) -> dict[int, tuple[list[str], list[list[str]]]]:
    """Per seed: image ids of stage 0 and of each continual phase (slices seeded by the seed)."""
    plans = {}
    for seed in seeds:
        full = load(config, [*over, f"seed={seed}"])
        if full["phases"].get("random_slices") is not None:
            full["phases"]["slice_seed"] = seed
        plans[seed] = phase_image_ids(full)
    return plans


def train_all(args, over: Sequence[str], work: Path, seeds: Sequence[int], modes: Sequence[str], n_stages: int, start: float) -> None:
    """Train (or resume, or skip) every run: each seed's stage-0 model first, then the modes that share it.

    The main comparison (finetune, modx) for every seed comes first, then feature_distill, then joint (the
    costliest), so an interrupted experiment has the most informative runs; runs held by another process of
    this script are retried after the others.
    """
    tiers = [("finetune", "modx"), ("feature_distill",), ("joint",)]
    order = [(s, m) for tier in tiers for s in seeds for m in tier if m in modes]
    done_stage0 = set()
    pending = list(enumerate(order))
    while pending:
        deferred = []
        for i, (seed, mode) in pending:
            s0_seed = seed if args.stage0_from is None else args.stage0_from
            s0 = work / f"seed{s0_seed}" / "stage0"
            if s0_seed not in done_stage0:
                train_run(stage0_config(args.config, over, s0_seed, s0), 1, f"seed {s0_seed} stage 0")
                done_stage0.add(s0_seed)
            out = run_dir(work, seed, mode, args.stage0_from)
            cfg = mode_config(args.config, over, seed, mode, s0 / "checkpoints" / "stage0.pt", out)
            if train_run(cfg, n_stages, f"[{i + 1}/{len(order)}] seed {seed} {mode}", wait=False) is None:
                deferred.append((i, (seed, mode)))
                continue
            say(f"elapsed {(time.perf_counter() - start) / 60:.1f} min")
        if deferred and len(deferred) == len(pending):
            time.sleep(10)
        pending = deferred


def analyse_all(args, work: Path, plans: dict, modes: Sequence[str], n_stages: int) -> tuple[list[dict], list[pd.DataFrame]]:
    """One results row and one curve frame per finished run; unfinished runs are left out (and said so)."""
    rows, curves = [], []
    for seed, (_, slices) in plans.items():
        slice_of = {img: k + 1 for k, ids in enumerate(slices) for img in ids}
        for mode in modes:
            path = run_dir(work, seed, mode, args.stage0_from)
            if run_state(path, n_stages) != "complete":
                say(f"seed {seed} {mode}: not finished, left out of the table")
                continue
            say(f"analysing seed {seed} {mode}")
            row, curve = analyse(path, mode, seed, slice_of)
            row["stage0_seed"] = seed if args.stage0_from is None else args.stage0_from
            rows.append(row)
            curves.append(curve)
    return rows, curves


def run_experiment(args: argparse.Namespace) -> int:
    """The whole experiment for parsed arguments (see ``parse_args``): train, analyse, write the table and figures."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    over = base_overrides(captions_path(args), args.overrides)
    work = args.work_dir.resolve()
    seeds, modes = list(dict.fromkeys(args.seeds)), [m for m in MODES if m in args.modes]
    start = time.perf_counter()
    plans = slice_plans(args.config, over, seeds)
    n_stages = len(plans[seeds[0]][1]) + 1
    say(f"experiment: seeds {seeds}, modes {modes}, {n_stages - 1} continual phases; runs under {work}")
    if args.stage0_only:
        for seed in seeds:
            train_run(stage0_config(args.config, over, seed, work / f"seed{seed}" / "stage0"), 1, f"seed {seed} stage 0")
        return 0
    if not args.report_only:
        train_all(args, over, work, seeds, modes, n_stages, start)
    rows, curves = analyse_all(args, work, plans, modes, n_stages)
    if not rows:
        say("no finished runs to analyse")
        return 1
    write_outputs(pd.DataFrame(rows), pd.concat(curves, ignore_index=True), args)
    say(f"finished in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


def main(argv=None) -> int:
    return run_experiment(parse_args(argv))


def write_outputs(rows: pd.DataFrame, curves: pd.DataFrame, args) -> None:
    from spatial_disorder.atomic import atomic_write_bytes

    res_dir = args.results_dir
    res_dir.mkdir(parents=True, exist_ok=True)
    rows = rows.sort_values(["mode", "seed"], key=lambda c: c.map({m: i for i, m in enumerate(MODES)}) if c.name == "mode" else c)
    atomic_write_bytes(res_dir / f"{args.name}.csv", rows.to_csv(index=False, float_format="%.4f").encode("utf-8"))
    atomic_write_bytes(res_dir / f"{args.name}_curves.csv", curves.to_csv(index=False, float_format="%.4f").encode("utf-8"))
    summary = summarise(rows)
    atomic_write_bytes(res_dir / f"{args.name}_summary.csv", summary.to_csv(index=False, float_format="%.4f").encode("utf-8"))
    n = rows.groupby("mode")["seed"].nunique().to_dict()
    counts = ", ".join(f"{MODE_LABELS.get(m, m)} {k}" for m, k in n.items())
    text = (f"# Reference experiment: {args.name}\n\nMean ± half-width of the 95% t-interval over seeds (runs per mode: {counts}). "
            "Old domain: Google style, new domain: Twitter style; R@1 on 300 seen concepts per style; disorder metrics on the "
            "old-domain probe, stage 0 -> last stage. Forgetting: positive = forgotten; BWT: negative = forgetting.\n\n"
            + markdown_table(summary))
    diffs = [paired_differences(rows, m, "finetune") for m in MODES[1:] if m in set(rows["mode"]) and "finetune" in set(rows["mode"])]
    diffs = [d for d in diffs if len(d) and d["n"].max() > 0]
    if diffs:
        text += ("\nPaired differences (each seed's runs share the stage-0 model and the slices): mean ± half-width of the "
                 "95% t-interval over seeds of (mode − fine-tune).\n\n" + markdown_table(pd.concat(diffs, ignore_index=True)))
    atomic_write_bytes(res_dir / f"{args.name}.md", text.encode("utf-8"))
    say(f"wrote {res_dir / (args.name + '.csv')} and {res_dir / (args.name + '.md')}")
    if not args.no_figures:
        from experiments.reference_figures import fig_disorder, fig_retrieval, fig_rigid, fig_tradeoff

        args.figures_dir.mkdir(parents=True, exist_ok=True)
        prefix = args.figures_dir / args.name
        n_seeds = int(rows["seed"].nunique())
        fig_retrieval(curves, Path(f"{prefix}_retrieval.png"), n_seeds)
        fig_disorder(rows, Path(f"{prefix}_disorder.png"), n_seeds)
        fig_tradeoff(rows, Path(f"{prefix}_tradeoff.png"))
        if rows[["rigid_share_image", "rigid_share_text"]].notna().all().all():
            fig_rigid(rows, Path(f"{prefix}_rigid.png"), n_seeds)
        say(f"wrote figures {prefix}_*.png")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
