"""Training-step benchmarks on the tiny model; every number is a ratio measured side by side in one run.

1. Mod-X step time / plain (CLIP-only) step time at batch 128 and 256, in the exact two-forward mode (the
   teacher embeds every batch) and with the teacher-embedding cache (teacher features computed once per
   phase; exact only without random augmentation).
2. Our plain step against a minimal loop built on open_clip's own ``ClipLoss`` (``open_clip_train`` is not
   a dependency), same model and batch: throughput ratio.
3. Embedding the probe sets after a stage / the stage's training time, from a small end-to-end run.

    python experiments/bench_train.py [--steps 8] [--model modx-tiny-vit-32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _batch(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 400, (n, 32), generator=g)
    tokens[:, 0] = 49406
    return torch.randn(n, 3, size, size, generator=g), tokens


def _time(fn, steps: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_steps(model_name: str, batch: int, steps: int) -> dict:
    from modx.distributed import DistContext
    from modx.losses import make_pieces
    from modx.models import create
    from modx.runner import Stepper, TeacherModel, param_groups

    torch.manual_seed(0)
    bundle = create(model_name)
    student, teacher = bundle.model, create(model_name).model
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

    class Cached:
        def features(self, *_):
            return cached_img, cached_txt

    import open_clip

    ref_loss = open_clip.loss.ClipLoss()
    ref_opt = torch.optim.AdamW(param_groups(student, 0.1), lr=1e-5)

    def reference():  # the core of open_clip's training loop: forward, ClipLoss, backward, clip, step
        ref_opt.zero_grad(set_to_none=True)
        img, txt, scale = student(pixels, tokens)[:3]
        loss = ref_loss(img, txt, scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        ref_opt.step()
        with torch.no_grad():
            student.logit_scale.clamp_(0, 4.6052)

    runs = {"plain": [], "modx_exact": [], "modx_cached": [], "open_clip_loop": []}
    for _ in range(steps):  # interleave so that load changes on the shared machine hit every variant alike
        runs["plain"] += _time(lambda: plain.step(pixels, tokens), 1)
        runs["modx_exact"] += _time(lambda: modx.step(pixels, tokens, teacher=exact), 1)
        runs["modx_cached"] += _time(lambda: modx.step(pixels, tokens, teacher=Cached()), 1)
        runs["open_clip_loop"] += _time(reference, 1)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "batch": batch,
        "modx_exact_over_plain": med["modx_exact"] / med["plain"],
        "modx_cached_over_plain": med["modx_cached"] / med["plain"],
        "plain_throughput_over_open_clip_loop": med["open_clip_loop"] / med["plain"],
        "median_seconds": med,
    }


def bench_embedding(model_name: str, epochs: int) -> dict:
    """Small end-to-end run (synthetic PNGs): embedding seconds / training seconds of each stage."""
    from PIL import Image

    from modx.config import load_config
    from modx.runner import train
    from spatial_disorder.run import open_run

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
        run = open_run(train(cfg))
        metas = [run.stage_meta(s) for s in run.stages[1:]]
    return {
        "stages": len(metas),
        "train_seconds": [m["train_seconds"] for m in metas],
        "embed_over_train": [m["embed_seconds"] / m["train_seconds"] for m in metas],
        "probe_images": 64,
        "images_per_phase": 224,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--model", default="modx-tiny-vit-32")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per phase for the embedding-cost run")
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    args = ap.parse_args()
    results = {"model": args.model, "torch_threads": torch.get_num_threads(), "steps": [bench_steps(args.model, b, args.steps) for b in args.batches]}
    results["embedding"] = bench_embedding(args.model, args.epochs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
