"""The epoch loop of one stage, as a function (open_clip's ``train_one_epoch`` is the model), and its callbacks.

``train_stage`` runs the stage's remaining epochs from a :class:`~modx.store.Position`: seeded batch order,
learning-rate schedule, one optimisation step per batch, loss-curve points, mid-stage checkpoints. Everything
else that watches the steps (progress bar, the crash simulation of the tests) is a callback outside the loop.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .config import TrainSettings
from .data.items import TrainDataset, epoch_order
from .distributed import DistContext
from .errors import DivergedError
from .schedule import lr_at
from .store import Position

CRASH_EXIT = 75  # exit status of the --stop-after-steps crash simulation


class StepCallback:
    """Watches the training: per stage ``start`` once, ``step`` after every step (and its checkpoint), ``end``
    once; ``stage_written`` after a stage's probe sets are embedded (rank 0). ``point`` holds step, epoch,
    loss, lr and each loss piece's value."""

    def start(self, k: int, total: int, pos: Position) -> None:
        pass

    def step(self, k: int, pos: Position, point: dict) -> None:
        pass

    def end(self, k: int) -> None:
        pass

    def stage_written(self, k: int, retrieval: dict) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressBar(StepCallback):
    """A tqdm bar per stage on stderr (rank 0)."""

    def __init__(self):
        self.bar = None

    def start(self, k, total, pos):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=pos.step, desc=f"stage{k}", file=sys.stderr, dynamic_ncols=True)

    def step(self, k, pos, point):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{point['loss']:.4f}")

    def end(self, k):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopAfterSteps(StepCallback):
    """Crash simulation for the resume tests: exit with ``CRASH_EXIT`` after ``n`` steps of this process, at once
    (no clean-up, no checkpoint), as a killed process would."""

    def __init__(self, n: int):
        self.n, self.count = n, 0

    def step(self, k, pos, point):
        self.count += 1
        if self.count >= self.n:
            sys.stderr.flush()
            os._exit(CRASH_EXIT)


@dataclass
class StageRun:
    """What one stage's loop needs: its data, settings, step function, schedule length, where to save and log."""

    k: int
    dataset: TrainDataset
    n_items: int
    hp: TrainSettings
    seed: int
    stepper: object  # modx.runner.Stepper
    teacher: object | None
    device: torch.device
    dist: DistContext
    total: int
    warm: int
    save: Callable[[Position], None]  # mid-stage checkpoint
    log: Callable[[dict], None]
    diverged_hint: str


def due(hp: TrainSettings, pos: Position, total: int) -> bool:
    """Whether a mid-stage checkpoint is due after ``pos.step`` (never at the stage's last step: the stage end saves)."""
    every = hp.checkpoint_every
    return every > 0 and pos.step % every == 0 and pos.step < total


def train_stage(run: StageRun, pos: Position, callbacks: Sequence[StepCallback] = ()) -> None:
    """Train stage ``run.k`` from ``pos`` to its last epoch, updating ``pos`` in place."""
    for cb in callbacks:
        cb.start(run.k, run.total, pos)
    start, base_seconds = time.perf_counter(), pos.train_seconds
    for epoch in range(pos.epoch, run.hp.epochs):
        batches = epoch_order(run.n_items, run.hp.batch_size, run.seed, run.k, epoch, run.hp.drop_last)
        local = [b[run.dist.local_slice(len(b))] for b in batches[pos.batch:]]
        loader = torch.utils.data.DataLoader(run.dataset, batch_sampler=local, num_workers=run.hp.num_workers)
        for pixels, tokens, idx, cap in loader:
            point = _one_step(run, pos, epoch, pixels, tokens, idx, cap)
            pos.train_seconds = base_seconds + time.perf_counter() - start
            if due(run.hp, pos, run.total) and pos.batch < len(batches):
                pos.epoch = epoch
                run.save(pos)
            for cb in callbacks:
                cb.step(run.k, pos, point)
        _end_epoch(run, pos, epoch)
    for cb in callbacks:
        cb.end(run.k)
    pos.train_seconds = base_seconds + time.perf_counter() - start


def _one_step(run: StageRun, pos: Position, epoch: int, pixels, tokens, idx, cap) -> dict:
    """One optimisation step; returns its point (step, epoch, loss, lr, pieces), kept on the curve every ``log_every``."""
    lr = lr_at(pos.step, run.hp.lr, run.total, run.warm)
    pixels, tokens = pixels.to(run.device, non_blocking=True), tokens.to(run.device, non_blocking=True)
    value, logs = run.stepper.step(pixels, tokens, idx, cap, run.teacher, lr)
    if not math.isfinite(value):
        run.log({"event": "diverged", "stage": run.k, "step": pos.step, "loss": str(value)})
        raise DivergedError(f"stage{run.k} step {pos.step}: loss is {value}; stopped, {run.diverged_hint}")
    pos.step += 1
    pos.batch += 1
    pos.epoch_sum += value
    pos.epoch_count += 1
    point = {"step": pos.step, "epoch": epoch, "loss": value, "lr": lr, **logs}
    if pos.step % run.hp.log_every == 0 or pos.step == run.total:
        pos.curve.append(point)
        run.log({"event": "step", "stage": run.k, **point})
    return point


def _end_epoch(run: StageRun, pos: Position, epoch: int) -> None:
    mean = pos.epoch_sum / max(1, pos.epoch_count)
    pos.epoch_loss.append(mean)
    run.log({"event": "epoch", "stage": run.k, "epoch": epoch, "mean_loss": mean})
    pos.epoch_sum, pos.epoch_count, pos.batch = 0.0, 0, 0
    pos.epoch = epoch + 1
    if due(run.hp, pos, run.total):
        run.save(pos)
