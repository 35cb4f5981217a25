"""The one training runner: stage 0, then every continual phase, each ended by the stage hook.

Every mode (finetune, modx, joint, feature_distill) runs through :class:`Runner`; modes differ only in the
loss pieces composed (see ``modx.losses``) and in the data of a phase (joint = union of all phases so far).
Stage hook: atomic checkpoint -> embed every probe set -> write the stage through ``RunWriter``.

The pieces: this module holds the step (``Stepper``, teachers) and the orchestration (``Runner``);
``modx.store`` the run folder, log and checkpoints; ``modx.loop`` the epoch loop and its callbacks;
``modx.stage_end`` the probe embedding and stage metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from . import checkpoint, models
from .config import RunConfig, resolve
from .data.items import ItemSet, TrainDataset, epoch_order
from .distributed import DistContext, cleanup, gather_features, init_distributed
from .embed import autocast, embed_items
from .errors import InterruptedRun
from .loop import CRASH_EXIT, ProgressBar, StageRun, StepCallback, StopAfterSteps, train_stage
from .losses import Batch, make_pieces, total_loss
from .plan import Phase, build_plan
from .schedule import warmup_steps
from .stage_end import ProbeEmbedder, stage_meta
from .store import Position, Resumed, RunStore, run_metadata, trim_log

__all__ = ["CRASH_EXIT", "Position", "Runner", "Stepper", "TeacherCache", "TeacherModel", "train", "trim_log"]

LOGIT_SCALE_MAX = math.log(100.0)


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


class Runner:
    """Runs a resolved config end to end (``run()``), writing a spatial_disorder run plus checkpoints.

    The constructor sets everything up (device, process group, seed, phase plan, model, loss pieces, run
    store, probe embedder) in the order the seeded results depend on; ``run()`` trains and writes.
    """

    def __init__(self, config: dict | RunConfig, resume: bool = False, progress: bool | None = None, overwrite: bool = False,
                 callbacks: Sequence[StepCallback] = ()):
        self.cfg = config if isinstance(config, RunConfig) else resolve(config)
        self.resume = resume
        self.device = pick_device(self.cfg.device)
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        show = self.cfg.train.progress if progress is None else progress
        self.callbacks = ([ProgressBar()] if show and self.dist.is_main else []) + list(callbacks)
        self.precision = "fp32" if self.device.type == "cpu" else self.cfg.precision
        torch.manual_seed(self.cfg.seed)
        if self.cfg.deterministic and self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.plan = build_plan(self.cfg.data)
        self.stages: list[Phase | None] = [self.plan.stage0] + self.plan.phases
        self.bundle = models.create(self.cfg.model.name, self.cfg.model.pretrained, self.cfg.model.augment)
        self.model = self.bundle.model.to(self.device)
        self.pieces = make_pieces(self.cfg.pieces, self.cfg.loss)
        self.store = RunStore(self.cfg, self.dist, overwrite)
        self.embedder = ProbeEmbedder(self.plan.probes, self.bundle, self.device, self.precision, self.cfg.model.embed_batch_size)
        self.optimizer: torch.optim.Optimizer | None = None
        if self.dist.is_main:
            self.callbacks += self._scalar_loggers()

    def _scalar_loggers(self) -> list[StepCallback]:
        """TensorBoard / wandb callbacks as configured (``logging``); steps count on across stages."""
        lg = self.cfg.logging
        if not (lg.tensorboard or lg.wandb):
            return []
        from .report_to import TensorBoardLogger, WandbLogger

        totals = [self._stage_steps(k, self._stage_items(k)) for k in range(len(self.stages))]
        offsets = [sum(totals[:k]) for k in range(len(totals))]

        def logit_scale() -> float:
            with torch.no_grad():
                return float(unwrap(self.model).logit_scale.exp())

        out = []
        if lg.tensorboard:
            out.append(TensorBoardLogger(self.cfg.output / "tensorboard", offsets, logit_scale))
        if lg.wandb:
            out.append(WandbLogger(self.cfg.output, lg.wandb_project, dict(self.cfg.data), offsets, logit_scale))
        return out

    @property
    def out(self) -> Path:
        return self.store.out

    def run(self) -> Path:
        try:
            resumed = self.store.open(unwrap(self.model), self.resume, run_metadata(self.cfg, self.plan, self.dist.world_size),
                                      [p.probe for p in self.plan.probes])
            pos = resumed.position
            written = set(self.store.writer.stage_names) if self.store.writer else set()
            for k in range(pos.stage, len(self.stages)):
                if k > pos.stage:
                    pos = Position(stage=k)
                if f"stage{k}" in written and pos.done:
                    continue
                if not pos.done:
                    self._train_stage(k, pos, resumed)
                    pos.done = True
                    self.store.save(k, pos, unwrap(self.model), self.optimizer, stage_end=True)
                if self.dist.is_main:
                    self._write_stage(k, pos)
                self.dist.barrier()
        except KeyboardInterrupt:
            raise InterruptedRun(self.store.interrupted_message()) from None
        except BaseException:
            self.store.remove_if_unresumable()
            raise
        finally:
            for cb in self.callbacks:
                cb.close()
            cleanup(self.dist)
        return self.out

    # --- one stage ------------------------------------------------------------------------------
    def _stage_table(self, k: int) -> pd.DataFrame | None:
        phase = self.stages[k]
        if phase is None:
            return None
        if self.cfg.mode == "joint" and k > 0:
            return pd.concat([p.table for p in self.stages[: k + 1] if p is not None], ignore_index=True)
        return phase.table

    def _stage_items(self, k: int) -> ItemSet | None:
        table = self._stage_table(k)
        return None if table is None else ItemSet.from_table(table)

    def _stage_steps(self, k: int, items: ItemSet | None) -> int:
        """Optimisation steps of stage k (0 for an untrained stage 0)."""
        if items is None:
            return 0
        hp = self.cfg.stage_settings(k)
        return len(epoch_order(len(items), hp.batch_size, self.cfg.seed, k, 0, hp.drop_last)) * hp.epochs

    def _teacher(self, k: int, items: ItemSet):
        """The frozen model that ended stage k-1 (or its cached embeddings); None for stage 0 or teacher-free pieces."""
        if k == 0 or not any(p.needs_teacher for p in self.pieces):
            return None
        model = models.create(self.cfg.model.name, None).model
        model.load_state_dict(checkpoint.load(self.store.ckpt_dir / f"stage{k - 1}.pt")["model"])
        teacher = TeacherModel(model.to(self.device), self.precision, self.device)
        if self.cfg.modx.teacher_cache:
            teacher = TeacherCache(teacher.model, items, self.bundle.eval_transform, self.bundle.tokenizer, self.device,
                                   self.precision, self.cfg.model.embed_batch_size)
        return teacher

    def _train_stage(self, k: int, pos: Position, resumed: Resumed) -> None:
        items = self._stage_items(k)
        if items is None:
            return  # stage 0 without training data: the initial model
        hp = self.cfg.stage_settings(k)
        total = self._stage_steps(k, items)
        teacher = self._teacher(k, items)
        model = self.model
        if self.dist.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        model.train()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=hp.betas, eps=hp.eps)
        if resumed.optimizer is not None:
            self.optimizer.load_state_dict(resumed.optimizer)
            resumed.optimizer = None
        stepper = Stepper(model, self.pieces, self.optimizer, self.dist, self.device, self.precision, hp.grad_clip)
        if resumed.rng is not None:
            torch.set_rng_state(resumed.rng)
            resumed.rng = None
        stage = StageRun(
            k=k, dataset=TrainDataset(items, self.bundle.train_transform, self.bundle.tokenizer), n_items=len(items), hp=hp,
            seed=self.cfg.seed, stepper=stepper, teacher=teacher, device=self.device, dist=self.dist, total=total,
            warm=warmup_steps(hp.warmup, total), log=self.store.log,
            save=lambda p: self.store.save(k, p, unwrap(self.model), self.optimizer, stage_end=False),
            diverged_hint=f"last good checkpoint kept in {self.store.ckpt_dir}",
        )
        train_stage(stage, pos, self.callbacks)

    def _write_stage(self, k: int, pos: Position) -> None:
        """Embed the probe sets with the model that ended stage k and write the stage (once)."""
        name = f"stage{k}"
        if name in self.store.writer.stage_names:
            return
        emb = self.embedder(unwrap(self.model))
        phase = self.stages[k]
        n_images = int(self._stage_table(k)["image_id"].nunique()) if phase is not None else 0
        self.store.writer.write_stage(name, emb.arrays, meta=stage_meta(k, phase, self.cfg.mode, self.cfg.stage_settings(k), pos,
                                                                         n_images, emb))
        self.store.log({"event": "stage", "stage": k, "retrieval": emb.retrieval, "embed_seconds": emb.seconds})
        for cb in self.callbacks:
            cb.stage_written(k, emb.retrieval)


def train(config: dict | RunConfig, resume: bool = False, stop_after_steps: int | None = None, progress: bool | None = None,
          overwrite: bool = False, callbacks: Sequence[StepCallback] = ()) -> Path:
    """Run a resolved config (see ``modx.config.load_config``); returns the run directory.

    ``stop_after_steps`` simulates a crash (tests of ``--resume``); ``callbacks`` watch the steps and stage ends.
    """
    extra = [StopAfterSteps(stop_after_steps)] if stop_after_steps is not None else []
    return Runner(config, resume=resume, progress=progress, overwrite=overwrite, callbacks=[*callbacks, *extra]).run()
