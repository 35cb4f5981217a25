"""The one training runner: stage 0, then every continual phase, each ended by the stage hook.

Every mode (finetune, modx, joint, feature_distill) runs through :class:`Runner`; modes differ only in the
loss pieces composed (see ``modx.losses``) and in the data of a phase (joint = union of all phases so far).
Stage hook: atomic checkpoint -> embed every probe set -> write the stage through ``RunWriter``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from spatial_disorder.atomic import atomic_write_bytes
from spatial_disorder.errors import RunFormatError
from spatial_disorder.run import RunWriter

from . import __version__, checkpoint, models
from .config import dump_yaml, pieces_for, resume_changes
from .data.items import ItemSet, TrainDataset, epoch_order
from .distributed import DistContext, cleanup, gather_features, init_distributed
from .embed import PreparedItems, autocast, embed_items, embed_probe_sets, retrieval
from .errors import ConfigError, DivergedError, InterruptedRun
from .losses import Batch, make_pieces, total_loss
from .plan import Phase, Plan, build_plan
from .schedule import lr_at, warmup_steps

LOGIT_SCALE_MAX = math.log(100.0)
CRASH_EXIT = 75  # exit status of the --stop-after-steps crash simulation


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, norms and the logit scale (as in open_clip's training)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class TeacherModel:
    """The frozen model that ended the previous stage; features computed on every batch (exact)."""

    def __init__(self, model, precision: str, device):
        self.model, self.precision, self.device = model.eval().requires_grad_(False), precision, device

    @torch.no_grad()
    def features(self, pixels, tokens, idx, cap):
        with autocast(self.device, self.precision):
            img = self.model.encode_image(pixels, normalize=True)
            txt = self.model.encode_text(tokens, normalize=True)
        return img.float(), txt.float()


class TeacherCache:
    """Teacher embeddings of every training image (eval transform) and caption, computed once per phase.

    Exact when training uses no random augmentation (``model.augment: false``); an approximation otherwise.
    """

    def __init__(self, model, items: ItemSet, transform, tokenizer, device, precision, batch_size):
        arrays = embed_items(model, items, transform, tokenizer, device, precision, batch_size)
        self.image = torch.from_numpy(arrays["image"]).to(device)
        self.text = torch.from_numpy(arrays["text"]).to(device)
        self.offsets = torch.from_numpy(items.caption_offsets()).to(device)

    def features(self, pixels, tokens, idx, cap):
        idx, cap = idx.to(self.image.device), cap.to(self.image.device)
        return self.image[idx], self.text[self.offsets[idx] + cap]


class Stepper:
    """One optimisation step on a local batch, with the contrastive matrices over the global batch."""

    def __init__(self, model, pieces, optimizer, dist: DistContext, device, precision="auto", grad_clip=1.0):
        self.model, self.pieces, self.optimizer, self.dist = model, pieces, optimizer, dist
        self.device, self.precision, self.grad_clip = device, precision, grad_clip

    def loss(self, pixels, tokens, idx=None, cap=None, teacher=None):
        with autocast(self.device, self.precision):
            img, txt, scale = self.model(pixels, tokens)[:3]
        img = gather_features(img.float(), self.dist)
        txt = gather_features(txt.float(), self.dist)
        batch = Batch(img, txt, scale.float())
        if teacher is not None:
            t_img, t_txt = teacher.features(pixels, tokens, idx, cap)
            batch.teacher_image = gather_features(t_img, self.dist, with_grad=False)
            batch.teacher_text = gather_features(t_txt, self.dist, with_grad=False)
        return total_loss(self.pieces, batch)

    def step(self, pixels, tokens, idx=None, cap=None, teacher=None, lr=None) -> tuple[float, dict]:
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        loss, logs = self.loss(pixels, tokens, idx, cap, teacher)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value, logs
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            unwrap(self.model).logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        return value, logs


@dataclass
class Position:
    """Where training stands: stage index, epoch, next batch, and what the stage has logged so far."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0
    done: bool = False
    curve: list = field(default_factory=list)
    epoch_loss: list = field(default_factory=list)
    epoch_sum: float = 0.0
    epoch_count: int = 0
    train_seconds: float = 0.0


class Runner:
    """Runs a resolved config end to end (``run()``), writing a spatial_disorder run plus checkpoints."""

    def __init__(self, config: dict, resume: bool = False, stop_after_steps: int | None = None, progress: bool | None = None,
                 overwrite: bool = False):
        self.config, self.resume, self.stop_after_steps, self.overwrite = config, resume, stop_after_steps, overwrite
        self.progress = config["train"]["progress"] if progress is None else progress
        self.out = Path(config["output"])
        self.ckpt_dir = self.out / "checkpoints"
        self._steps_this_process = 0
        self._prepared_probes: dict[str, PreparedItems] = {}

    # --- setup ----------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        self.device = pick_device(cfg["device"])
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.precision = "fp32" if self.device.type == "cpu" else cfg["precision"]
        torch.manual_seed(cfg["seed"])
        if cfg["deterministic"] and self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.plan: Plan = build_plan(cfg)
        self.bundle = models.create(cfg["model"]["name"], cfg["model"]["pretrained"], cfg["model"]["augment"])
        self.model = self.bundle.model.to(self.device)
        self.pieces = make_pieces(pieces_for(cfg), cfg["loss"])
        self.stages: list[Phase | None] = [self.plan.stage0] + self.plan.phases

    def _open_run(self) -> Position:
        """Create the run (fresh) or reopen it and load the last checkpoint (resume)."""
        last = self.ckpt_dir / "last.pt"
        if self.resume and (self.out / "run.json").exists():
            self.writer = RunWriter.open(self.out) if self.dist.is_main else None
            self._check_resumed_config()
            if last.exists():
                state = checkpoint.load(last)
                unwrap(self.model).load_state_dict(state["model"])
                self._pending_rng = state["rng"]["torch"]
                self._pending_optimizer = state.get("optimizer")
                pos = Position(**state["position"])
                if self.dist.is_main:
                    trim_log(self.out / "train_log.jsonl", pos)
                self._log({"event": "resume", "stage": pos.stage, "epoch": pos.epoch, "batch": pos.batch, "done": pos.done})
                return pos
            return Position()
        if self.dist.is_main:
            meta = {
                "model": self.config["model"]["name"],
                "pretrained": self.config["model"]["pretrained"],
                "mode": self.config["train"]["mode"],
                "loss_pieces": pieces_for(self.config),
                "seed": self.config["seed"],
                "stages": self.plan.describe(),
                "trainer": {"name": "modx", "version": __version__},
                "config": self.config,
                "world_size": self.dist.world_size,
            }
            if (self.out / "run.json").exists() and not self.overwrite:
                raise ConfigError(f"{self.out}: a run already exists here; continue it with --resume, replace it with --overwrite, "
                                  "or choose another --output")
            existed = self.out.exists()
            try:
                self.writer = RunWriter.create(self.out, metadata=meta, overwrite=self.overwrite)
            except RunFormatError as exc:
                raise ConfigError(str(exc)) from None
            self._created, self._dir_existed = True, existed
            atomic_write_bytes(self.out / "config.yaml", dump_yaml(self.config).encode("utf-8"))
            for p in self.plan.probes:
                self.writer.add_probe(p.probe)
        else:
            self.writer = None
        self.dist.barrier()
        return Position()

    def _check_resumed_config(self) -> None:
        """Refuse to resume with a config that differs from the run's (beyond ``RESUME_SAFE_KEYS``)."""
        from spatial_disorder.run import open_run

        saved = open_run(self.out, check_sha256=False).metadata.get("config")
        if saved is None:
            return
        changed = resume_changes(saved, self.config)
        if changed:
            raise ConfigError(f"{self.out}: --resume with a config that differs from the run's in {', '.join(changed)}; "
                              "resume with the run's config (its config.yaml) or start a new run")

    def _log(self, record: dict) -> None:
        if self.dist.is_main:
            with open(self.out / "train_log.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    # --- data of a stage --------------------------------------------------------------------------
    def _stage_table(self, k: int) -> pd.DataFrame | None:
        phase = self.stages[k]
        if phase is None:
            return None
        if self.config["train"]["mode"] == "joint" and k > 0:
            tables = [p.table for p in self.stages[: k + 1] if p is not None]
            return pd.concat(tables, ignore_index=True)
        return phase.table

    def _stage_hparams(self, k: int) -> dict:
        t = dict(self.config["train"])
        if k == 0 and self.config.get("stage0"):
            for key in ("epochs", "lr", "batch_size", "warmup", "weight_decay"):
                if key in self.config["stage0"]:
                    t[key] = self.config["stage0"][key]
        return t

    # --- main loop ----------------------------------------------------------------------------
    def run(self) -> Path:
        self._setup()
        self._pending_optimizer = self._pending_rng = None
        self._created = False
        try:
            pos = self._open_run()
            written = set(self.writer.stage_names) if self.writer else set()
            for k in range(pos.stage, len(self.stages)):
                name = f"stage{k}"
                if k > pos.stage:
                    pos = Position(stage=k)
                if name in written and pos.done:
                    continue
                if not pos.done:
                    self._train_stage(k, pos)
                    pos.done = True
                    self._save(k, pos, stage_end=True)
                if self.dist.is_main:
                    self._write_stage(k, pos)
                self.dist.barrier()
        except KeyboardInterrupt:
            raise InterruptedRun(self._interrupted()) from None
        except BaseException:
            self._remove_if_unresumable()
            raise
        finally:
            cleanup(self.dist)
        return self.out

    def _resumable(self) -> bool:
        return (self.ckpt_dir / "last.pt").exists()

    def _remove_if_unresumable(self) -> None:
        """A fresh run that failed before its first checkpoint leaves nothing behind (it would block the rerun)."""
        if self._created and self.dist.is_main and not self._resumable():
            shutil.rmtree(self.out, ignore_errors=True)
            if self._dir_existed:  # it was an empty folder before: leave it as it was
                self.out.mkdir(parents=True, exist_ok=True)

    def _interrupted(self) -> str:
        """The one line Ctrl-C ends with: what was saved and how to continue."""
        if not self._resumable():
            self._remove_if_unresumable()
            gone = f"; {self.out} was removed" if self._created else ""
            return f"interrupted before the first checkpoint: nothing was saved{gone}"
        pos = checkpoint.load(self.ckpt_dir / "last.pt")["position"]
        where = f"end of stage{pos['stage']}" if pos["done"] else f"stage{pos['stage']} step {pos['step']}"
        return f"interrupted: the last checkpoint ({where}) is in {self.ckpt_dir / 'last.pt'}; continue with the same command and --resume"

    def _teacher(self, k: int):
        if k == 0 or not any(p.needs_teacher for p in self.pieces):
            return None
        model = models.create(self.config["model"]["name"], None).model
        model.load_state_dict(checkpoint.load(self.ckpt_dir / f"stage{k - 1}.pt")["model"])
        return TeacherModel(model.to(self.device), self.precision, self.device)

    def _train_stage(self, k: int, pos: Position) -> None:
        table = self._stage_table(k)
        if table is None:
            return  # stage 0 without training data: the initial model
        hp = self._stage_hparams(k)
        items = ItemSet.from_table(table)
        dataset = TrainDataset(items, self.bundle.train_transform, self.bundle.tokenizer)
        n_batches = len(epoch_order(len(items), hp["batch_size"], self.config["seed"], k, 0, hp["drop_last"]))
        total = n_batches * hp["epochs"]
        warm = warmup_steps(float(hp["warmup"]), total)
        teacher = self._teacher(k)
        if teacher is not None and self.config["loss"]["modx"]["teacher_cache"]:
            teacher = TeacherCache(teacher.model, items, self.bundle.eval_transform, self.bundle.tokenizer, self.device,
                                   self.precision, self.config["model"]["embed_batch_size"])
        model = self.model
        if self.dist.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        model.train()
        optimizer = torch.optim.AdamW(param_groups(self.model, float(hp["weight_decay"])), lr=float(hp["lr"]),
                                      betas=tuple(hp["betas"]), eps=float(hp["eps"]))
        if self._pending_optimizer is not None:
            optimizer.load_state_dict(self._pending_optimizer)
            self._pending_optimizer = None
        stepper = Stepper(model, self.pieces, optimizer, self.dist, self.device, self.precision, float(hp["grad_clip"]))
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=pos.step, desc=f"stage{k}", file=sys.stderr, dynamic_ncols=True)
        self._optimizer = optimizer
        if self._pending_rng is not None:
            torch.set_rng_state(self._pending_rng)
            self._pending_rng = None
        start = time.perf_counter()
        base_seconds = pos.train_seconds
        for epoch in range(pos.epoch, hp["epochs"]):
            batches = epoch_order(len(items), hp["batch_size"], self.config["seed"], k, epoch, hp["drop_last"])
            local = [b[self.dist.local_slice(len(b))] for b in batches[pos.batch :]]
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=local, num_workers=hp["num_workers"])
            for pixels, tokens, idx, cap in loader:
                lr = lr_at(pos.step, float(hp["lr"]), total, warm)
                pixels, tokens = pixels.to(self.device, non_blocking=True), tokens.to(self.device, non_blocking=True)
                value, logs = stepper.step(pixels, tokens, idx, cap, teacher, lr)
                if not math.isfinite(value):
                    self._log({"event": "diverged", "stage": k, "step": pos.step, "loss": str(value)})
                    raise DivergedError(
                        f"stage{k} step {pos.step}: loss is {value}; stopped, last good checkpoint kept in {self.ckpt_dir}"
                    )
                pos.step += 1
                pos.batch += 1
                pos.epoch_sum += value
                pos.epoch_count += 1
                if pos.step % max(1, hp["log_every"]) == 0 or pos.step == total:
                    point = {"step": pos.step, "epoch": epoch, "loss": value, "lr": lr, **logs}
                    pos.curve.append(point)
                    self._log({"event": "step", "stage": k, **point})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}")
                pos.train_seconds = base_seconds + time.perf_counter() - start
                self._steps_this_process += 1
                if self._due(hp, pos, total) and pos.batch < len(batches):
                    pos.epoch = epoch
                    self._save(k, pos, stage_end=False)
                if self.stop_after_steps is not None and self._steps_this_process >= self.stop_after_steps:
                    if bar is not None:
                        bar.close()
                    sys.stderr.flush()
                    os._exit(CRASH_EXIT)  # simulate a crash: no cleanup, no checkpoint
            mean = pos.epoch_sum / max(1, pos.epoch_count)
            pos.epoch_loss.append(mean)
            self._log({"event": "epoch", "stage": k, "epoch": epoch, "mean_loss": mean})
            pos.epoch_sum, pos.epoch_count, pos.batch = 0.0, 0, 0
            pos.epoch = epoch + 1
            if self._due(hp, pos, total):
                self._save(k, pos, stage_end=False)
        if bar is not None:
            bar.close()
        pos.train_seconds = base_seconds + time.perf_counter() - start

    @staticmethod
    def _due(hp: dict, pos: Position, total: int) -> bool:
        every = int(hp["checkpoint_every"] or 0)
        return every > 0 and pos.step % every == 0 and pos.step < total

    def _save(self, k: int, pos: Position, stage_end: bool) -> None:
        if not self.dist.is_main:
            self.dist.barrier()
            return
        state_dict = unwrap(self.model).state_dict()
        position = {key: getattr(pos, key) for key in Position.__dataclass_fields__}
        optimizer = getattr(self, "_optimizer", None)
        state = {
            "model": state_dict,
            "optimizer": None if (stage_end or optimizer is None) else optimizer.state_dict(),
            "position": position,
            "rng": {"torch": torch.get_rng_state()},
            "model_name": self.config["model"]["name"],
        }
        if stage_end:
            checkpoint.save_atomic({"model": state_dict, "model_name": self.config["model"]["name"], "stage": f"stage{k}"},
                                   self.ckpt_dir / f"stage{k}.pt")
        checkpoint.save_atomic(state, self.ckpt_dir / "last.pt")
        self._log({"event": "checkpoint", "stage": k, "step": pos.step, "stage_end": stage_end})
        self.dist.barrier()

    def _probe_inputs(self, probe) -> PreparedItems:
        """Probe images decoded and captions tokenised once per run (the probe sets never change)."""
        cache = self._prepared_probes
        if probe.probe.name not in cache:
            cache[probe.probe.name] = PreparedItems(probe.items, self.bundle.eval_transform, self.bundle.tokenizer,
                                                    self.config["model"]["embed_batch_size"])
        return cache[probe.probe.name]

    def _write_stage(self, k: int, pos: Position) -> None:
        name = f"stage{k}"
        if name in self.writer.stage_names:
            return
        t0 = time.perf_counter()
        scores = {}
        arrays = embed_probe_sets(unwrap(self.model), {p.probe.name: self._probe_inputs(p) for p in self.plan.probes},
                                  self.device, self.precision, self.config["model"]["embed_batch_size"])
        for p in self.plan.probes:
            a = arrays[p.probe.name]
            scores[p.probe.name] = retrieval(a["image"], a["text"], p.probe.text_to_image)
        embed_seconds = time.perf_counter() - t0
        phase = self.stages[k]
        hp = self._stage_hparams(k)
        meta: dict[str, Any] = {
            "phase": phase.label if phase is not None else "initial model",
            "stage_index": k,
            "mode": self.config["train"]["mode"] if k > 0 else "finetune",
            "trained": phase is not None,
            "epochs": hp["epochs"] if phase is not None else 0,
            "steps": pos.step,
            "images": int(self._stage_table(k)["image_id"].nunique()) if phase is not None else 0,
            "loss_curve": pos.curve,
            "epoch_loss": pos.epoch_loss,
            "retrieval": scores,
            "train_seconds": round(pos.train_seconds, 3),
            "embed_seconds": round(embed_seconds, 3),
            "checkpoint": f"checkpoints/stage{k}.pt",
        }
        self.writer.write_stage(name, arrays, meta=meta)
        self._log({"event": "stage", "stage": k, "retrieval": scores, "embed_seconds": embed_seconds})


def trim_log(path: Path, pos: Position) -> None:
    """Drop the log records an interrupted attempt wrote after its last checkpoint (the resumed run writes them again)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        try:
            record = json.loads(lines[i])
        except ValueError:
            continue  # a line cut by the crash
        if record.get("event") == "checkpoint" and record.get("stage") == pos.stage and record.get("step") == pos.step:
            keep = i + 1
            break
    else:
        return
    if keep < len(lines):
        atomic_write_bytes(path, "".join(lines[:keep]).encode("utf-8"))


def train(config: dict, resume: bool = False, stop_after_steps: int | None = None, progress: bool | None = None,
          overwrite: bool = False) -> Path:
    """Run a resolved config (see ``modx.config.load_config``); returns the run directory."""
    return Runner(config, resume=resume, stop_after_steps=stop_after_steps, progress=progress, overwrite=overwrite).run()
