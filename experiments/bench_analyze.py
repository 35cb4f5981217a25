"""Benchmark the analyzers against the unavoidable kNN search, a fast mode and a naive pipeline.

For each n it writes a synthetic run (clustered, low-rank-ish embeddings, one caption per image, planted
rotation + noise drift per stage), then runs every mode in a fresh child process (so peak memory is the
mode's own) and prints times as ratios measured in the same run:

  baseline  faiss IndexFlatIP exact top-(k+1) search, once per stage and modality (nothing else)
  searches  baseline plus one faiss caption -> image top-k search per stage: every search the metric set
            needs (intra-modal neighbours and cross-modal retrieval), still without any metric
  exact     analyze_run(run) with the faiss backend: every metric, every default stage pair
  fast      analyze_run(run, fast=True): sampled queries, 95% CI for the neighbour overlap
  ivf       recall@k of the approximate faiss-ivf backend on one stage, against exact search
  naive     sklearn NearestNeighbors (brute, cosine) + scipy orthogonal_procrustes + a full similarity
            matrix for retrieval (skipped above --naive-max items: it needs an n x n matrix)
  e2e       `sd-analyze RUN --backend faiss` end to end: analysis, report (figures, HTML, metrics.json), writing
  e2e-fast  the same with --fast

Shapes: ``--captions C`` captions per image, ``--probes P`` probe sets of n images each. The COCO-test shape is
``--n 5000 --captions 5 --d 512 --stages 6``; the quickstart shape ``--n 300 --captions 4 --probes 3 --d 64``.

Usage:
  python experiments/bench_analyze.py --n 10000 100000 --d 512 --stages 6 [--threads 2] [--modes ...]
  python experiments/bench_analyze.py --n 5000 --captions 5 --d 512 --modes baseline exact e2e e2e-fast
  python experiments/bench_analyze.py --n 300 --captions 4 --probes 3 --d 64 --modes exact e2e --repeat 5

On a shared machine the time of one invocation varies by tens of percent; ``--repeat R`` runs the modes R times,
interleaved, and prints each mode's median round and the per-round end-to-end ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("baseline", "searches", "exact", "fast", "ivf", "naive", "e2e", "e2e-fast")


# --- data ---------------------------------------------------------------------------------------------
def probe_names(n_probes: int) -> list[str]:
    return ["bench"] if n_probes == 1 else [f"bench{p}" for p in range(n_probes)]


def clip_like_embeddings(n: int, captions: int, d: int, seed: int = 0):
    """Images and captions shaped like real CLIP embeddings (a common mean direction and a power-law spectrum, so most
    of the d directions are nearly empty; synthetic.clip_like_cloud), captions near their image, one basis for both."""
    from spatial_disorder.synthetic import clip_like_cloud

    img, basis = clip_like_cloud(n, d, seed=seed)
    t2i = np.repeat(np.arange(n), captions)
    txt = img[t2i] + 0.3 * clip_like_cloud(len(t2i), d, seed=seed + 2, basis=basis)[0] + 0.3 * basis[:, 3]
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img.astype(np.float32), txt.astype(np.float32), t2i, basis


def make_run(path: Path, n: int, d: int, stages: int, seed: int = 0, captions: int = 1, n_probes: int = 1,
             data: str = "structured") -> Path:
    """Write a run stage by stage (only one stage in memory at a time). ``data``: "structured" (clustered low-rank
    embeddings plus isotropic noise that fills every direction above the rotation fit's variance floor, the worst case
    for the Procrustes family's cost) or "clip-like" (most directions nearly empty, as in real CLIP embeddings; the
    planted rotations turn its principal planes)."""
    import pandas as pd

    from spatial_disorder.run import ProbeSet, RunWriter
    from spatial_disorder.synthetic import planted_rotation, structured_embeddings

    rng = np.random.default_rng(seed + 1)
    planes = clip_like_embeddings(8, 1, d, seed=seed)[3][:, 1:7] if data == "clip-like" else None
    r_img = planted_rotation(d, [6.0, 4.0, 2.0], seed=seed + 2, basis=planes).astype(np.float32)
    r_txt = planted_rotation(d, [5.0, 3.0], seed=seed + 3, basis=planes).astype(np.float32)
    writer = RunWriter.create(path, metadata={"model": "synthetic-bench", "n": n, "d": d, "captions": captions, "data": data})
    cur = {}
    for p, name in enumerate(probe_names(n_probes)):
        if data == "clip-like":
            img, txt, t2i, _ = clip_like_embeddings(n, captions, d, seed=seed)  # one basis for every probe set
        else:
            img, txt, t2i = structured_embeddings(n, captions, d, seed=seed + 10 * p)
        caps = [[f"caption {j} of image {i}" for j in range(captions)] for i in range(n)]
        writer.add_probe(ProbeSet.from_captions(name, pd.DataFrame({"id": [f"i{i}" for i in range(n)]}), caps))
        cur[name] = {"image": img.astype(np.float32), "text": txt.astype(np.float32)}
    noise = 0.15 / np.sqrt(d)
    for t in range(stages):
        if t:
            for arrays in cur.values():
                arrays["image"] = arrays["image"] @ r_img + noise * rng.standard_normal(arrays["image"].shape, dtype=np.float32)
                arrays["text"] = arrays["text"] @ r_txt + noise * rng.standard_normal(arrays["text"].shape, dtype=np.float32)
        writer.write_stage(f"stage{t}", cur)
    return path


def cpu() -> float:
    """CPU seconds of this process, all threads, plus its finished child processes (the report's figure workers): less
    sensitive than wall time to other load on a shared machine."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- modes (run in a child process) --------------------------------------------------------------------
def mode_baseline(run, k, cross=False):
    """Exact faiss searches only: per stage, image -> image and text -> text (and caption -> image if ``cross``)."""
    import faiss

    total = total_cpu = 0.0
    for s, probe in ((s, p) for s in run.stages for p in run.probes):
        x = {m: unit(run.embeddings(s, probe, m)) for m in ("image", "text")}
        searches = [("image", "image", k + 1), ("text", "text", k + 1)] + ([("text", "image", k)] if cross else [])
        for queries, database, kk in searches:
            t, c = time.perf_counter(), cpu()
            index = faiss.IndexFlatIP(x[database].shape[1])
            index.add(x[database])
            index.search(x[queries], kk)
            total += time.perf_counter() - t
            total_cpu += cpu() - c
    return {"seconds": total, "cpu_seconds": total_cpu}


def _overlaps(res):
    s = res.summary
    out = {}
    for metric in ("knn_overlap_mean", "knn_overlap_ci_low", "knn_overlap_ci_high"):
        for row in s[s.metric == metric].itertuples():
            out.setdefault(f"{row.stage_a}->{row.stage_b}/{row.modality}", {})[metric] = row.value
    return out


def _cells(res, metrics=("procrustes_angle_deg", "rigid_share", "topology_change_mean_deg")):
    """Summary values of the sampled-but-interval-free metrics, keyed "metric stage_a->stage_b/modality"."""
    s = res.summary
    return {f"{r.metric} {r.stage_a}->{r.stage_b}/{r.modality}": r.value for r in s[s.metric.isin(metrics)].itertuples()}


def mode_analysis(run, k, fast):
    from spatial_disorder.analysis import analyze_run

    t, c = time.perf_counter(), cpu()
    res = analyze_run(run, k=k, fast=fast, backend="faiss")
    recall = {f"{r.stage}/{r.probe}/{r.direction}_{r.metric}": r.value for r in res.retrieval.itertuples()}
    return {"seconds": time.perf_counter() - t, "cpu_seconds": cpu() - c, "timing": res.meta["timing_s"], "overlaps": _overlaps(res),
            "queries": res.meta["knn_queries"], "recall": recall, "recall_ci": res.meta.get("retrieval_ci95", {}),
            "cells": _cells(res), "fit_rows": res.meta.get("procrustes_rows", {})}


def mode_e2e(run, fast):
    """`sd-analyze RUN` as a user runs it (the faiss backend), into a temporary report folder."""
    import contextlib
    import io

    from spatial_disorder.cli import main as sd_analyze

    args = [str(run.path), "--backend", "faiss"] + (["--fast"] if fast else [])
    with tempfile.TemporaryDirectory() as out:
        buf = io.StringIO()
        t, c = time.perf_counter(), cpu()
        with contextlib.redirect_stdout(buf):
            code = sd_analyze([*args, "--out", str(Path(out) / "report")])
        seconds, cpu_seconds = time.perf_counter() - t, cpu() - c
        written = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    if code:
        raise SystemExit(f"sd-analyze exited with {code}")
    m = re.search(r"analysis ([\d.]+) s, report ([\d.]+) s", buf.getvalue())
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "analysis_s": float(m.group(1)), "report_s": float(m.group(2)),
            "written_mb": written / 1e6}


def mode_ivf(run, k):
    from spatial_disorder.knn import get_backend

    x = unit(run.embeddings(run.stages[-1], next(iter(run.probes)), "image"))
    t, c = time.perf_counter(), cpu()
    _, approx = get_backend("faiss-ivf", nprobe=16).topk(x, x, k, exclude_self=True, normalized=True)
    seconds, cpu_seconds = time.perf_counter() - t, cpu() - c
    _, exact = get_backend("faiss").topk(x, x, k, exclude_self=True, normalized=True)
    recall = float(np.mean((approx[:, :, None] == exact[:, None, :]).any(axis=2)))
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "recall_at_k": recall}


def mode_naive(run, k, naive_max):
    from scipy.linalg import orthogonal_procrustes
    from sklearn.neighbors import NearestNeighbors

    n = run.probes[next(iter(run.probes))].n_images
    t, c = time.perf_counter(), cpu()
    data = {(s, m): unit(run.embeddings(s, next(iter(run.probes)), m)) for s in run.stages for m in ("image", "text")}
    knn = {key: NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x).kneighbors(x)[1][:, 1:]
           for key, x in data.items()}
    pairs = [(run.stages[0], s) for s in run.stages[1:]] + [(a, b) for a, b in zip(run.stages[1:], run.stages[2:])]
    for a, b in pairs:
        for m in ("image", "text"):
            xa, xb = data[(a, m)], data[(b, m)]
            np.degrees(np.arccos(np.clip(np.sum(xa * xb, axis=1), -1, 1)))
            r, _ = orthogonal_procrustes(xa, xb)
            np.linalg.eigvals(r)
            np.mean([len(np.intersect1d(p, q)) / k for p, q in zip(knn[(a, m)], knn[(b, m)])])
    retrieval = n <= naive_max
    if retrieval:
        for s in run.stages:
            sims = data[(s, "text")] @ data[(s, "image")].T
            own = np.diag(sims)
            (sims > own[:, None]).sum(axis=1)
            (sims > own[None, :]).sum(axis=0)
    return {"seconds": time.perf_counter() - t, "cpu_seconds": cpu() - c, "retrieval_included": retrieval}


def child(args) -> None:
    from spatial_disorder import open_run

    run = open_run(args.run, check_sha256=False)
    if args.child in ("baseline", "searches"):
        out = mode_baseline(run, args.k, cross=args.child == "searches")
    elif args.child in ("exact", "fast"):
        out = mode_analysis(run, args.k, args.child == "fast")
    elif args.child in ("e2e", "e2e-fast"):
        out = mode_e2e(run, args.child == "e2e-fast")
    elif args.child == "ivf":
        out = mode_ivf(run, args.k)
    else:
        out = mode_naive(run, args.k, args.naive_max)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_gb"] = usage.ru_maxrss / 1024**2
    out["cpu_seconds_total"] = usage.ru_utime + usage.ru_stime
    print("RESULT " + json.dumps(out))


# --- driver -------------------------------------------------------------------------------------------
def run_child(mode: str, run_path: Path, args) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, __file__, "--child", mode, "--run", str(run_path), "--k", str(args.k), "--naive-max", str(args.naive_max)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"error: mode {mode} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10000])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--stages", type=int, default=6)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--captions", type=int, default=1, help="captions per image (COCO: 5)")
    p.add_argument("--probes", type=int, default=1, help="probe sets of n images each (the quickstart has 3)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads in every mode")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of every mode, interleaved; the table shows each mode's median round (noisy machines)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--naive-max", type=int, default=20000, help="largest n for the naive full-matrix retrieval")
    p.add_argument("--workdir", default=None, help="where to write the synthetic runs (default: a temporary folder)")
    p.add_argument("--data", default="structured", choices=("structured", "clip-like"),
                   help="synthetic embeddings: structured (noise fills every direction; default) or clip-like (most directions nearly empty)")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sd-bench-"))
    try:
        for n in args.n:
            run_path = work / (f"run-n{n}-d{args.d}-c{args.captions}-p{args.probes}-s{args.stages}"
                               + ("-cliplike" if args.data == "clip-like" else ""))
            if not (run_path / "run.json").exists():
                shutil.rmtree(run_path, ignore_errors=True)
                t = time.perf_counter()
                make_run(run_path, n, args.d, args.stages, captions=args.captions, n_probes=args.probes, data=args.data)
                print(f"# n={n}: wrote a {args.stages}-stage run in {time.perf_counter() - t:.1f} s", flush=True)
            rounds = []
            for r in range(args.repeat):
                rounds.append({})
                for mode in args.modes:
                    res = rounds[-1][mode] = run_child(mode, run_path, args)
                    print(f"#   {mode:<8} {res['seconds']:8.2f} s  peak RSS {res['peak_rss_gb']:.2f} GB"
                          + (f"  (round {r + 1})" if args.repeat > 1 else ""), flush=True)
            report(n, args, {mode: median_round(rounds, mode) for mode in args.modes})
            if args.repeat > 1:
                print_rounds(rounds, args.modes)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def median_round(rounds: list[dict], mode: str) -> dict:
    """The mode's result from the round with its median wall time (the lower middle one for an even count)."""
    ordered = sorted((rnd[mode] for rnd in rounds), key=lambda res: res["seconds"])
    return ordered[(len(ordered) - 1) // 2]


def print_rounds(rounds: list[dict], modes) -> None:
    """Every round's wall time per mode, and the end-to-end ratios to analyze_run taken within each round (the
    modes of a round run one after the other, so they share the machine's load of the moment)."""
    print(f"\nrounds (modes interleaved; the table above shows each mode's median round, {len(rounds)} rounds):")
    for mode in modes:
        print(f"  {mode:<10} wall s " + ", ".join(f"{rnd[mode]['seconds']:.1f}" for rnd in rounds))
    for mode in ("e2e", "e2e-fast"):
        if mode in modes and "exact" in modes:
            ratios = sorted(rnd[mode]["seconds"] / rnd["exact"]["seconds"] for rnd in rounds)
            print(f"  {mode:<10} / analyze_run per round " + ", ".join(f"{x:.2f}" for x in ratios)
                  + f"; median {float(np.median(ratios)):.2f}")


def report(n, args, r) -> None:
    base = r.get("baseline", {}).get("seconds")
    base_cpu = r.get("baseline", {}).get("cpu_seconds")
    print(f"\n## n = {n} images x {args.captions} captions x {args.probes} probe sets, d = {args.d}, stages = {args.stages}, "
          f"k = {args.k}, threads = {args.threads}, data = {args.data}")
    print("wall = elapsed seconds; cpu = CPU seconds of all threads (steadier when other jobs share the machine)")
    print(f"{'mode':<10}{'wall s':>9}{'/ base':>8}{'cpu s':>9}{'/ base':>8}{'peak RSS GB':>13}  notes")
    for mode, res in r.items():
        ratio = f"{res['seconds'] / base:.2f}" if base else "-"
        cpu_ratio = f"{res['cpu_seconds'] / base_cpu:.2f}" if base_cpu else "-"
        notes = ""
        if mode in ("exact", "fast"):
            tm = res["timing"]
            notes = ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in tm.items())
            if mode == "exact" and base:
                other = res["seconds"] - tm["retrieval_s"]
                notes += f"; wall without the retrieval pass {other / base:.2f}x baseline"
            if mode == "exact" and "searches" in r:
                searches = r["searches"]
                notes += (f"; wall / cpu against all searches {res['seconds'] / searches['seconds']:.2f}"
                          f" / {res['cpu_seconds'] / searches['cpu_seconds']:.2f}")
        elif mode in ("e2e", "e2e-fast"):
            notes = f"analysis {res['analysis_s']:.1f}s, report {res['report_s']:.1f}s, {res['written_mb']:.1f} MB written"
            if "exact" in r:
                notes += f"; / analyze_run alone {res['seconds'] / r['exact']['seconds']:.2f}"
        elif mode == "ivf":
            notes = f"recall@{args.k} = {res['recall_at_k']:.3f} (one stage, image)"
        elif mode == "naive":
            notes = "with full-matrix retrieval" if res["retrieval_included"] else f"retrieval skipped (n > {args.naive_max})"
        print(f"{mode:<10}{res['seconds']:>9.1f}{ratio:>8}{res['cpu_seconds']:>9.1f}{cpu_ratio:>8}{res['peak_rss_gb']:>13.2f}  {notes}")
    if "exact" in r and "fast" in r:
        ex, fa = r["exact"]["overlaps"], r["fast"]["overlaps"]
        covered = [fa[key]["knn_overlap_ci_low"] <= ex[key]["knn_overlap_mean"] <= fa[key]["knn_overlap_ci_high"] for key in ex]
        print(f"fast-mode 95% CI covers the exact neighbour overlap in {sum(covered)}/{len(covered)} (pair, modality) cells")
        for key in list(ex)[:4]:
            print(f"  {key:<24} exact {ex[key]['knn_overlap_mean']:.4f}  fast {fa[key]['knn_overlap_mean']:.4f} "
                  f"[{fa[key]['knn_overlap_ci_low']:.4f}, {fa[key]['knn_overlap_ci_high']:.4f}]")
        ci, exact_recall = r["fast"]["recall_ci"], r["exact"]["recall"]
        hits = [lo <= exact_recall[key] <= hi for key, (lo, hi) in ci.items()]
        print(f"fast-mode 95% CI covers the exact R@K (sampled queries) in {sum(hits)}/{len(hits)} (stage, direction, K) cells")
        for key in list(ci)[:3]:
            print(f"  {key:<24} exact {exact_recall[key]:.2f}  fast {r['fast']['recall'][key]:.2f} [{ci[key][0]:.2f}, {ci[key][1]:.2f}]")
        print_fast_cells(r["exact"]["cells"], r["fast"]["cells"], r["fast"]["fit_rows"])


def print_fast_cells(exact: dict, fast: dict, fit_rows: dict) -> None:
    """Fast mode against exact mode for the metrics sampled without an interval (Procrustes fit rows, topology items)."""
    print(f"fast-mode values without an interval (Procrustes fit rows {fit_rows}):")
    for metric in ("procrustes_angle_deg", "rigid_share", "topology_change_mean_deg"):
        keys = [key for key in exact if key.startswith(metric + " ") and key in fast]
        if not keys:
            continue
        diff = [abs(fast[key] - exact[key]) for key in keys]
        rel = [d / abs(exact[key]) for d, key in zip(diff, keys) if exact[key]]
        worst = keys[int(np.argmax(diff))]
        print(f"  {metric:<26} {len(keys)} cells: largest |fast - exact| {max(diff):.4g} ({100 * max(rel, default=0):.2f}% of the"
              f" exact value at most); {worst.split(' ', 1)[1]}: exact {exact[worst]:.4f}, fast {fast[worst]:.4f}")


if __name__ == "__main__":
    sys.exit(main())
