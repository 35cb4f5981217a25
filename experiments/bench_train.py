"""Training-step benchmarks on the tiny model; every number is a ratio measured side by side in one run.

1. Mod-X step time / plain (CLIP-only) step time at batch 128 and 256, in the exact two-forward mode (the
   teacher embeds every batch) and with the teacher-embedding cache (teacher features computed once per
   phase; exact only without random augmentation).
2. Our plain step against open_clip's own training loop, ``open_clip_train.train.train_one_epoch`` (the loop
   that ``open_clip_train.main`` runs; see ``openclip_reference_loop.py``), same model config, batch, fp32,
   CPU, same process and thread count: throughput ratio (ours / theirs).

   What is timed: ours, ``Stepper.step`` with the learning rate set each step (forward, loss, loss value read
   back, zero_grad, backward, gradient clip, AdamW, logit-scale clamp); theirs, one ``train_one_epoch`` call
   over the same pre-built batches (scheduler, device transfer, zero_grad, forward, ``ClipLoss``, backward,
   clip, AdamW, clamp, meters, its logging). Data loading is excluded on both sides (pre-built batches); their
   loop is called once per round, so its per-call setup and one log line fall in the timed steps.
   ``--cli`` also runs the full ``open_clip_train.main`` command line on synthetic data once and reports its
   own per-step times (``Batch (t)`` minus ``Data (t)``), a cross-check that is not interleaved.
3. Embedding the probe sets after a stage / the stage's training time, read from the stage metadata of
   existing runs (``--runs``), or from a small synthetic end-to-end run (``--synthetic-run``).

The variants are interleaved on a noisy shared machine: every round times ``--steps-per-round`` steps of
each variant (order rotated per round); ratios are taken per round (paired) and summarised by their median
and range, from wall-clock time and from the process's CPU time (less sensitive to other processes taking
the cores; ``--threads 1`` makes it the cleanest measure).

    nice python experiments/bench_train.py [--threads 1] [--rounds 7] [--steps-per-round 1] [--batches 128 256] [--cli]
        [--runs RUN ...] [--synthetic-run]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _batch(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 400, (n, 32), generator=g)
    tokens[:, 0] = 49406
    return torch.randn(n, 3, size, size, generator=g), tokens


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def bench_steps(model_name: str, batch: int, rounds: int, steps_per_round: int) -> dict:
    sys.path.insert(0, str(HERE))
    from openclip_reference_loop import OpenClipTrainLoop

    from modx.distributed import DistContext
    from modx.losses import make_pieces
    from modx.models import create
    from modx.runner import Stepper, TeacherModel, param_groups

    torch.manual_seed(0)
    student, teacher = create(model_name).model, create(model_name).model
    size = student.visual.image_size[0] if isinstance(student.visual.image_size, tuple) else student.visual.image_size
    pixels, tokens = _batch(batch, size)
    loss_cfg = {"modx": {"alpha": 20.0, "temperature": 1.0, "reduction": "sum", "include_diagonal": True}}

    def stepper(names):
        opt = torch.optim.AdamW(param_groups(student, 0.1), lr=1e-5)
        return Stepper(student, make_pieces(names, loss_cfg), opt, DistContext(), torch.device("cpu"), "fp32", 1.0)

    plain, modx = stepper(["clip"]), stepper(["clip", "modx"])
    exact = TeacherModel(teacher, "fp32", torch.device("cpu"))
    with torch.no_grad():
        cached_img = teacher.encode_image(pixels, normalize=True)
        cached_txt = teacher.encode_text(tokens, normalize=True)

    class Cached:  # what TeacherCache.features returns: rows of precomputed teacher embeddings
        def features(self, *_):
            return cached_img, cached_txt

    theirs = OpenClipTrainLoop(model_name, batch, lr=1e-5, wd=0.1, grad_clip=1.0)
    batches = [(pixels, tokens)] * steps_per_round

    def ours(step_fn):
        def run():
            for _ in range(steps_per_round):
                step_fn()

        return run

    variants = {
        "plain": ours(lambda: plain.step(pixels, tokens, lr=1e-5)),
        "modx_exact": ours(lambda: modx.step(pixels, tokens, teacher=exact, lr=1e-5)),
        "modx_cached": ours(lambda: modx.step(pixels, tokens, teacher=Cached(), lr=1e-5)),
        "open_clip_train": lambda: theirs.run(batches),
    }
    names = list(variants)
    for name in names:  # warm-up round, untimed
        variants[name]()
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(rounds):  # interleaved, order rotated, so load changes on the shared machine hit every variant
        for name in names[r % len(names):] + names[: r % len(names)]:
            t, c = time.perf_counter(), time.process_time()
            variants[name]()
            wall[name].append((time.perf_counter() - t) / steps_per_round)
            cpu[name].append((time.process_time() - c) / steps_per_round)

    def ratios(per_step):  # paired per round
        return {
            "modx_exact_over_plain": _summary([m / p for m, p in zip(per_step["modx_exact"], per_step["plain"])]),
            "modx_cached_over_plain": _summary([m / p for m, p in zip(per_step["modx_cached"], per_step["plain"])]),
            "plain_throughput_over_open_clip_train": _summary([o / p for o, p in zip(per_step["open_clip_train"], per_step["plain"])]),
        }

    return {
        "batch": batch,
        "rounds": rounds,
        "steps_per_round": steps_per_round,
        "ratios_wall": ratios(wall),
        "ratios_cpu": ratios(cpu),
        "wall_seconds_per_step": {k: _summary(v) for k, v in wall.items()},
        "cpu_seconds_per_step": {k: _summary(v) for k, v in cpu.items()},
    }


def bench_cli(model_name: str, batch: int, steps: int, threads: int = 0) -> dict:
    """The full ``open_clip_train.main`` command line on synthetic data; its own per-step log, parsed."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, str(HERE / "openclip_reference_loop.py"), "--dataset-type", "synthetic",
                "--train-num-samples", str(batch * steps), "--batch-size", str(batch), "--model", model_name,
                "--precision", "fp32", "--device", "cpu", "--workers", "0", "--epochs", "1", "--lr", "1e-5",
                "--wd", "0.1", "--warmup", "0", "--grad-clip-norm", "1.0", "--log-every-n-steps", "1",
                "--logs", tmp, "--name", "bench", "--seed", "0"]
        t = time.perf_counter()
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
        wall = time.perf_counter() - t
    lines = re.findall(r"Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+)", out.stderr + out.stdout)
    data, total = [float(d) for d, _ in lines[1:]], [float(b) for _, b in lines[1:]]  # first step: warm-up
    return {
        "batch": batch,
        "steps_logged": len(lines) - 1,
        "batch_seconds": _summary(total),
        "data_seconds": _summary(data),
        "batch_minus_data_seconds": _summary([b - d for b, d in zip(total, data)]),
        "process_wall_seconds": round(wall, 1),
    }


def embedding_from_runs(paths: list[str]) -> list[dict]:
    """embed_seconds / train_seconds of every trained stage of existing runs (from their stage metadata)."""
    from spatial_disorder.run import open_run

    out = []
    for path in paths:
        run = open_run(path, check_sha256=False)
        stages = []
        for s in run.stages:
            m = run.stage_meta(s)
            if m.get("train_seconds"):
                stages.append({"stage": s, "train_seconds": m["train_seconds"], "embed_seconds": m["embed_seconds"],
                               "embed_over_train": round(m["embed_seconds"] / m["train_seconds"], 4)})
        probes = {name: len(p.images) for name, p in run.probes.items()}
        out.append({"run": str(path), "probe_images": probes, "stage0_embed_seconds": run.stage_meta(run.stages[0])["embed_seconds"],
                    "stages": stages,
                    "total_embed_over_train": round(sum(s["embed_seconds"] for s in stages) / sum(s["train_seconds"] for s in stages), 4)
                    if stages else None})
    return out


def synthetic_embedding_run(model_name: str, epochs: int) -> dict:
    """Small end-to-end run (synthetic PNGs): embedding seconds / training seconds of each stage."""
    from PIL import Image

    from modx.config import load_config
    from modx.runner import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = ["filepath,title,image_id,split"]
        g = torch.Generator().manual_seed(0)
        for i in range(512):
            colour = tuple(int(c) for c in torch.randint(0, 255, (3,), generator=g))
            Image.new("RGB", (32, 32), colour).save(root / f"{i}.png")
            rows.append(f"{i}.png,colour {colour[0]} {colour[1]} {colour[2]},{i},{'test' if i % 8 == 0 else 'train'}")
        (root / "c.csv").write_text("\n".join(rows) + "\n")
        cfg = load_config(data={
            "output": str(root / "run"), "model": {"name": model_name},
            "datasets": {"d": {"path": str(root / "c.csv"), "image_id_key": "image_id"}},
            "phases": {"dataset": "d", "where": {"split": "train"}, "random_slices": 2},
            "probes": [{"name": "test", "dataset": "d", "where": {"split": "test"}}],
            "train": {"mode": "modx", "epochs": epochs, "batch_size": 128, "progress": False},
        })
        result = embedding_from_runs([str(train(cfg))])[0]
    result["run"] = f"synthetic: 64 probe images, 224 images x {epochs} epochs per phase"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="modx-tiny-vit-32")
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per batch size")
    ap.add_argument("--steps-per-round", type=int, default=1)
    ap.add_argument("--cli", action="store_true", help="also run open_clip_train.main on synthetic data (not interleaved)")
    ap.add_argument("--cli-steps", type=int, default=6)
    ap.add_argument("--runs", nargs="*", default=[], help="runs whose stage metadata give embed/train seconds")
    ap.add_argument("--synthetic-run", action="store_true", help="embedding cost from a small synthetic end-to-end run")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per phase of the synthetic run")
    ap.add_argument("--skip-steps", action="store_true", help="skip the step benchmarks")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); the same for every variant")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"model": args.model, "torch_threads": torch.get_num_threads(), "precision": "fp32", "device": "cpu"}
    if not args.skip_steps:
        results["steps"] = [bench_steps(args.model, b, args.rounds, args.steps_per_round) for b in args.batches]
    if args.cli:
        results["open_clip_train_cli"] = [bench_cli(args.model, b, args.cli_steps, args.threads) for b in args.batches]
    if args.runs:
        results["embedding_runs"] = embedding_from_runs(args.runs)
    if args.synthetic_run:
        results["embedding_synthetic"] = synthetic_embedding_run(args.model, args.epochs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
