"""Fixtures for the modx tests: tiny synthetic image-caption datasets in real on-disk formats.

Images are 32 px PNGs: a coloured shape on a background whose colour depends on the style, so that the
same concept in two styles is a small domain shift (like the emoji benchmark).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "bar", "cross")


def draw(colour: str, shape: str, style: str, size: int = 32):
    from PIL import Image, ImageDraw

    bg = (255, 255, 255) if style == "google" else (30, 30, 30)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    c, a, b = COLOURS[colour], size // 5, size - size // 5
    if shape == "square":
        d.rectangle([a, a, b, b], fill=c)
    elif shape == "circle":
        d.ellipse([a, a, b, b], fill=c)
    elif shape == "bar":
        d.rectangle([a, size // 2 - 3, b, size // 2 + 3], fill=c)
    else:
        d.rectangle([a, size // 2 - 2, b, size // 2 + 2], fill=c)
        d.rectangle([size // 2 - 2, a, size // 2 + 2, b], fill=c)
    return img


def concepts():
    return [(c, s) for c in COLOURS for s in SHAPES]


def make_emoji_like(root: Path, styles=("google", "twitter"), captions_per_image: int = 2) -> Path:
    """Write ``root/captions.csv`` in the emoji benchmark's layout; returns the CSV path.

    16 concepts x len(styles) images; relative ``filepath``; ``image_id`` groups several caption rows;
    ``split`` is test for the last 4 concepts.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    rows = ["filepath,title,image_id,style,concept,category,subcategory,split"]
    for style in styles:
        for k, (colour, shape) in enumerate(concepts()):
            rel = f"img/{style}_{colour}_{shape}.png"
            draw(colour, shape, style).save(root / rel)
            split = "test" if k >= 12 else "train"
            for j in range(captions_per_image):
                title = [f"a {colour} {shape}", f"{shape} in {colour}", f"the {colour} {shape} icon"][j % 3]
                rows.append(f"{rel},{title},{style}-{colour}-{shape},{style},{colour}-{shape},{colour},{shape},{split}")
    path = root / "captions.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_config(tmp: Path, csv: Path, **sections) -> dict:
    """A tiny CPU config (as data) over ``make_emoji_like`` output; keyword args replace top-level sections."""
    config = {
        "output": str(tmp / "run"),
        "seed": 0,
        "model": {"name": "modx-tiny-vit-32"},
        "datasets": {"emoji": {"format": "csv", "path": str(csv), "image_id_key": "image_id"}},
        "stage0": {"dataset": "emoji", "where": {"style": "google", "split": "train"}, "epochs": 1},
        "phases": {"dataset": "emoji", "where": {"style": "twitter", "split": "train"}, "random_slices": 2, "slice_seed": 0},
        "probes": [
            {"name": "old", "dataset": "emoji", "where": {"style": "google", "split": "test"}},
            {"name": "new", "dataset": "emoji", "where": {"style": "twitter", "split": "test"}},
        ],
        "train": {"mode": "finetune", "epochs": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1, "progress": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict) and key not in ("stage0", "phases"):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_coco(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (colour, shape) in enumerate(concepts()[:n]):
        name = f"COCO_{i:06d}.png"
        draw(colour, shape, "google").save(root / name)
        images.append({"id": 100 + i, "file_name": name, "height": 32, "width": 32})
        anns += [{"id": 10 * i + j, "image_id": 100 + i, "caption": f" a {colour} {shape} number {j} "} for j in range(2)]
    path = root / "captions_train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns[::-1]}))
    return path


def write_karpathy(root: Path, n: int = 4) -> Path:
    (root / "train2014").mkdir(parents=True, exist_ok=True)
    images = []
    for i, (colour, shape) in enumerate(concepts()[:n]):
        name = f"k_{i}.png"
        draw(colour, shape, "twitter").save(root / "train2014" / name)
        images.append({"filepath": "train2014", "filename": name, "imgid": i, "split": "test" if i == 0 else "train",
                       "sentences": [{"raw": f"A {colour} {shape}.", "tokens": []}, {"raw": f"{shape} {colour}", "tokens": []}]})
    path = root / "dataset_tiny.json"
    path.write_text(json.dumps({"images": images, "dataset": "tiny"}))
    return path


def write_wds(root: Path, n_shards: int = 2, per_shard: int = 2) -> str:
    import io

    root.mkdir(parents=True, exist_ok=True)
    items = concepts()
    k = 0
    for s in range(n_shards):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for _ in range(per_shard):
                colour, shape = items[k]
                buf = io.BytesIO()
                draw(colour, shape, "google").save(buf, format="PNG")
                payload = {f"{k:05d}.png": buf.getvalue()}
                if k % 2:
                    payload[f"{k:05d}.json"] = json.dumps({"caption": f"a {colour} {shape}", "colour": colour}).encode()
                else:
                    payload[f"{k:05d}.txt"] = f"a {colour} {shape}".encode()
                for name, data in payload.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                k += 1
    last = f"{n_shards - 1:03d}"
    return str(root / ("shard-{000.." + last + "}.tar"))


def random_unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ddp_setup(seed: int = 0, batch: int = 8):
    """A tiny model, a perturbed teacher and one global batch, identical in every process."""
    import torch

    from modx.models import create

    torch.manual_seed(seed)
    student = create("modx-tiny-vit-32").model
    teacher = create("modx-tiny-vit-32").model
    g = torch.Generator().manual_seed(seed + 1)
    pixels = torch.randn(batch, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 400, (batch, 32), generator=g)
    tokens[:, 0] = 49406
    return student, teacher, pixels, tokens


def ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank of the gloo check: loss and gradients over the global batch, saved for the parent."""
    import os

    import torch

    from modx.distributed import init_distributed
    from modx.losses import make_pieces
    from modx.runner import Stepper, TeacherModel

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ctx = init_distributed("cpu")
    student, teacher, pixels, tokens = ddp_setup()
    model = torch.nn.parallel.DistributedDataParallel(student)
    pieces = make_pieces(["clip", "modx"], {"modx": {"alpha": 20.0, "temperature": 1.0, "reduction": "sum", "include_diagonal": True}})
    stepper = Stepper(model, pieces, None, ctx, torch.device("cpu"))
    part = ctx.local_slice(len(pixels))
    loss, logs = stepper.loss(pixels[part], tokens[part], teacher=TeacherModel(teacher, "fp32", torch.device("cpu")))
    loss.backward()
    grads = {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}
    torch.save({"loss": loss.detach(), "logs": logs, "grads": grads}, f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()
