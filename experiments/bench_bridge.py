"""Benchmark the bridge: fitting time against scipy, and the memory of carrying a large index over.

Two measurements, each in a fresh child process (so a peak is the measurement's own):

  fit    time of ``spatial_disorder.bridge.fit`` (orthogonal, rows normalised block by block, float64
         products) on an --fit-n x --d pair, as a ratio to one ``scipy.linalg.orthogonal_procrustes`` call on
         the same (already unit-row) arrays; best of --repeats each, in the same process
  apply  ``bridge.apply_npy`` streaming an --apply-n x --d float32 .npy through a d x d map into a new .npy:
         wall time, throughput, the ratio to the same matrix products on one in-memory block (the floor:
         reading, normalising and writing add the rest), and peak RSS growth (VmHWM after minus VmRSS before)

Usage:
  python experiments/bench_bridge.py                          # 100k x 512 fit, 1M x 512 apply (needs 4 GB disk)
  python experiments/bench_bridge.py --fit-n 20000 --apply-n 100000 --d 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def child_fit(n: int, d: int, repeats: int, seed: int = 0) -> dict:
    import scipy.linalg

    from spatial_disorder import bridge
    from spatial_disorder.synthetic import planted_rotation

    rng = np.random.default_rng(seed)
    a = _unit(rng.normal(size=(n, d)).astype(np.float32))
    b = _unit(a @ planted_rotation(d, [20.0] * (d // 4), seed=seed).astype(np.float32) + 0.05 / np.sqrt(d) * rng.normal(size=(n, d)).astype(np.float32))

    def best(f) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    t_scipy = best(lambda: scipy.linalg.orthogonal_procrustes(a, b))
    t_ours = best(lambda: bridge.fit(a, b))
    r_scipy = scipy.linalg.orthogonal_procrustes(a.astype(np.float64), b.astype(np.float64))[0]
    diff = float(np.abs(bridge.fit(a, b).matrix - r_scipy).max())
    return {"n": n, "d": d, "scipy_s": t_scipy, "bridge_fit_s": t_ours, "ratio": t_ours / t_scipy, "max_abs_diff_vs_scipy_f64": diff}


def child_apply(src: str, dst: str, d: int) -> dict:
    from spatial_disorder import bridge
    from spatial_disorder.synthetic import planted_rotation

    b = bridge.Bridge(planted_rotation(d, [20.0] * (d // 4), seed=1))
    n = int(np.load(src, mmap_mode="r").shape[0])
    rows = bridge.block_rows(d)
    x, m = _unit(np.random.default_rng(0).normal(size=(rows, d)).astype(np.float32)), b.matrix.astype(np.float32)
    t = time.perf_counter()
    for _ in range(0, n, rows):  # the same products on one block kept in memory: the floor for any apply
        x @ m
    product = time.perf_counter() - t
    before = _status_kb("VmRSS")
    t = time.perf_counter()
    bridge.apply_npy(b, src, dst)
    wall = time.perf_counter() - t
    peak = _status_kb("VmHWM")
    size = Path(src).stat().st_size
    return {"wall_s": wall, "rss_before_mb": before / 1024, "peak_rss_growth_mb": (peak - before) / 1024,
            "input_mb": size / 2**20, "throughput_mb_s": size / 2**20 / wall, "bare_product_s": product,
            "ratio_to_bare_product": wall / product}


def write_input(path: Path, n: int, d: int, block: int = 65536) -> None:
    """A unit-row float32 .npy of n x d, written block by block (never whole in memory)."""
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, block):
        out[s : s + block] = _unit(rng.normal(size=(min(block, n - s), d)).astype(np.float32))
    out.flush()
    del out


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit-n", type=int, default=100_000)
    p.add_argument("--apply-n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        res = child_fit(int(rest[0]), int(rest[1]), int(rest[2])) if kind == "fit" else child_apply(rest[0], rest[1], int(rest[2]))
        print(json.dumps(res))
        return 0
    fit = run_child("fit", str(args.fit_n), str(args.d), str(args.repeats))
    print(f"fit   {fit['n']} x {fit['d']}: bridge.fit {fit['bridge_fit_s']:.3f} s, scipy.linalg.orthogonal_procrustes "
          f"{fit['scipy_s']:.3f} s, ratio {fit['ratio']:.2f} (goal <= 1.5); max |R - R_scipy(float64)| {fit['max_abs_diff_vs_scipy_f64']:.1e}")
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        src, dst = Path(tmp) / "old_index.npy", Path(tmp) / "new_index.npy"
        write_input(src, args.apply_n, args.d)
        app = run_child("apply", str(src), str(dst), str(args.d))
    print(f"apply {args.apply_n} x {args.d} float32 ({app['input_mb']:.0f} MB): {app['wall_s']:.2f} s, "
          f"{app['throughput_mb_s']:.0f} MB/s, {app['ratio_to_bare_product']:.2f} x the bare in-memory product "
          f"({app['bare_product_s']:.2f} s); peak RSS growth {app['peak_rss_growth_mb']:.1f} MB (goal <= 300)")
    print(json.dumps({"fit": fit, "apply": app}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
