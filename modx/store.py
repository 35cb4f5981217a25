"""The run folder of a training run: create or reopen it, the JSONL log, checkpoints, and clean-up on failure.

Only rank 0 writes; the other ranks wait at the same barriers. A fresh run that fails before its first
checkpoint is removed (it would only block the corrected rerun); a run with a checkpoint is kept for ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spatial_disorder.atomic import atomic_write_bytes
from spatial_disorder.errors import RunFormatError
from spatial_disorder.run import RunWriter, open_run

from . import __version__, checkpoint
from .config import RunConfig, dump_yaml, resume_changes
from .distributed import DistContext
from .errors import ConfigError


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


@dataclass
class Resumed:
    """What a checkpoint hands to the next stage's training: optimizer state and the torch RNG state."""

    position: Position
    optimizer: dict | None = None
    rng: torch.Tensor | None = None


class RunStore:
    """Run folder, log and checkpoints of one training run (writes on rank 0 only)."""

    def __init__(self, cfg: RunConfig, dist: DistContext, overwrite: bool = False):
        self.cfg, self.dist, self.overwrite = cfg, dist, overwrite
        self.out = cfg.output
        self.ckpt_dir = self.out / "checkpoints"
        self.log_path = self.out / "train_log.jsonl"
        self.writer: RunWriter | None = None
        self.created = False  # this process created the run folder (so it may remove it on failure)
        self.dir_existed = False

    # --- opening --------------------------------------------------------------------------------
    def open(self, model, resume: bool, metadata: dict, probes) -> Resumed:
        """Reopen the run and load its last checkpoint into ``model`` (resume), or create it (fresh)."""
        if resume and (self.out / "run.json").exists():
            return self._reopen(model)
        if self.dist.is_main:
            self._create(metadata, probes)
        self.dist.barrier()
        return Resumed(Position())

    def _reopen(self, model) -> Resumed:
        self.writer = RunWriter.open(self.out) if self.dist.is_main else None
        self._check_config()
        last = self.ckpt_dir / "last.pt"
        if not last.exists():
            return Resumed(Position())
        state = checkpoint.load(last)
        model.load_state_dict(state["model"])
        pos = Position(**state["position"])
        if self.dist.is_main:
            trim_log(self.log_path, pos)
        self.log({"event": "resume", "stage": pos.stage, "epoch": pos.epoch, "batch": pos.batch, "done": pos.done})
        return Resumed(pos, state.get("optimizer"), state["rng"]["torch"])

    def _check_config(self) -> None:
        """Refuse to resume with a config that differs from the run's (beyond ``RESUME_SAFE_KEYS``)."""
        saved = open_run(self.out, check_sha256=False).metadata.get("config")
        changed = resume_changes(saved, self.cfg.data) if saved is not None else []
        if changed:
            raise ConfigError(f"{self.out}: --resume with a config that differs from the run's in {', '.join(changed)}; "
                              "resume with the run's config (its config.yaml) or start a new run")

    def _create(self, metadata: dict, probes) -> None:
        if (self.out / "run.json").exists() and not self.overwrite:
            raise ConfigError(f"{self.out}: a run already exists here; continue it with --resume, replace it with --overwrite, "
                              "or choose another --output")
        existed = self.out.exists()
        try:
            self.writer = RunWriter.create(self.out, metadata=metadata, overwrite=self.overwrite)
        except RunFormatError as exc:
            raise ConfigError(str(exc)) from None
        self.created, self.dir_existed = True, existed
        atomic_write_bytes(self.out / "config.yaml", dump_yaml(self.cfg.data).encode("utf-8"))
        for probe in probes:
            self.writer.add_probe(probe)

    # --- log and checkpoints --------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if self.dist.is_main:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def save(self, k: int, pos: Position, model, optimizer, stage_end: bool) -> None:
        """``last.pt`` (model, optimizer mid-stage, position, RNG); at a stage end also ``stageK.pt``."""
        if not self.dist.is_main:
            self.dist.barrier()
            return
        with deferred_interrupt():
            self._save(k, pos, model, optimizer, stage_end)
        self.dist.barrier()

    def _save(self, k: int, pos: Position, model, optimizer, stage_end: bool) -> None:
        state_dict = model.state_dict()
        position = {key: getattr(pos, key) for key in Position.__dataclass_fields__}
        state = {
            "model": state_dict,
            "optimizer": None if (stage_end or optimizer is None) else optimizer.state_dict(),
            "position": position,
            "rng": {"torch": torch.get_rng_state()},
            "model_name": self.cfg.model.name,
        }
        if stage_end:
            checkpoint.save_atomic({"model": state_dict, "model_name": self.cfg.model.name, "stage": f"stage{k}"},
                                   self.ckpt_dir / f"stage{k}.pt")
        checkpoint.save_atomic(state, self.ckpt_dir / "last.pt")
        self.log({"event": "checkpoint", "stage": k, "step": pos.step, "stage_end": stage_end})

    # --- failures -------------------------------------------------------------------------------
    def resumable(self) -> bool:
        return (self.ckpt_dir / "last.pt").exists()

    def remove_if_unresumable(self) -> None:
        """A fresh run that failed before its first checkpoint leaves nothing behind (it would block the rerun)."""
        if self.created and self.dist.is_main and not self.resumable():
            shutil.rmtree(self.out, ignore_errors=True)
            if self.dir_existed:  # it was an empty folder before: leave it as it was
                self.out.mkdir(parents=True, exist_ok=True)

    def interrupted_message(self) -> str:
        """The one line Ctrl-C ends with: what was saved and how to continue."""
        if not self.resumable():
            self.remove_if_unresumable()
            gone = f"; {self.out} was removed" if self.created else ""
            return f"interrupted before the first checkpoint: nothing was saved{gone}"
        pos = checkpoint.load(self.ckpt_dir / "last.pt")["position"]
        where = f"end of stage{pos['stage']}" if pos["done"] else f"stage{pos['stage']} step {pos['step']}"
        return f"interrupted: the last checkpoint ({where}) is in {self.ckpt_dir / 'last.pt'}; continue with the same command and --resume"


def run_metadata(cfg: RunConfig, plan, world_size: int) -> dict:
    """The run's free metadata (``run.json``): model, mode, pieces, seed, stage plan, trainer, resolved config."""
    return {
        "model": cfg.model.name,
        "pretrained": cfg.model.pretrained,
        "mode": cfg.mode,
        "loss_pieces": cfg.pieces,
        "seed": cfg.seed,
        "stages": plan.describe(),
        "trainer": {"name": "modx", "version": __version__},
        "config": cfg.data,
        "world_size": world_size,
    }


def trim_log(path: Path, pos: Position) -> None:
    """Drop the log records an interrupted attempt wrote after its last checkpoint (the resumed run writes them again)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i in range(len(lines) - 1, -1, -1):
        try:
            record = json.loads(lines[i])
        except ValueError:
            continue  # a line cut by the crash
        if record.get("event") == "checkpoint" and record.get("stage") == pos.stage and record.get("step") == pos.step:
            if i + 1 < len(lines):
                atomic_write_bytes(path, "".join(lines[: i + 1]).encode("utf-8"))
            return


@contextlib.contextmanager
def deferred_interrupt():
    """Hold a Ctrl-C that arrives while a checkpoint is written and raise it once the write is complete: an interrupt
    inside torch's serialiser surfaces as another error (a traceback, exit 1) instead of the one-line resume advice."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
