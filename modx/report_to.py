"""Training scalars for TensorBoard and Weights & Biases (``logging.tensorboard``, ``logging.wandb``, ``--report-to``).

Both are callbacks of the epoch loop (rank 0 only): every step logs the loss, each loss piece, the learning rate
and the logit scale under ``train/`` against a global step that runs on across stages; every stage end logs each
probe's retrieval scores under ``probe/<name>/<metric>`` against the stage index. Off by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import ConfigError
from .loop import StepCallback
from .store import Position

REPORT_TO = ("tensorboard", "wandb")


def report_to_overrides(value: str) -> list[str]:
    """``--report-to tensorboard,wandb`` (or ``all``, ``none``) as config overrides."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names == ["all"]:
        names = list(REPORT_TO)
    if names == ["none"]:
        names = []
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise ConfigError(f"--report-to: unknown {', '.join(map(repr, unknown))} (known: {', '.join(REPORT_TO)}, all, none)")
    return [f"logging.{name}={'true' if name in names else 'false'}" for name in REPORT_TO]


class ScalarLogger(StepCallback):
    """Turns steps and stage ends into named scalars; ``write(tag, value, step)`` is the back end."""

    def __init__(self, stage_offsets: Sequence[int], logit_scale: Callable[[], float]):
        self.offsets, self.logit_scale = list(stage_offsets), logit_scale

    def step(self, k: int, pos: Position, point: dict) -> None:
        step = self.offsets[k] + pos.step
        values = {f"train/{key}": value for key, value in point.items() if key not in ("step", "epoch")}
        values["train/logit_scale"] = self.logit_scale()
        values["train/stage"] = k
        self.write(values, step)

    def stage_written(self, k: int, retrieval: dict) -> None:
        values = {f"probe/{probe}/{metric}": value for probe, scores in retrieval.items() for metric, value in scores.items()}
        self.write(values, k)

    def write(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError


class TensorBoardLogger(ScalarLogger):
    """Event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN/tensorboard``); the writer opens on first use."""

    def __init__(self, log_dir: Path, stage_offsets, logit_scale):
        super().__init__(stage_offsets, logit_scale)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("logging.tensorboard needs the tensorboard package: pip install tensorboard") from None
        self._make = lambda: SummaryWriter(log_dir=str(log_dir))
        self.writer = None

    def write(self, values, step):
        if self.writer is None:
            self.writer = self._make()
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), global_step=step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(ScalarLogger):
    """A Weights & Biases run (project ``logging.wandb_project``, named after the run folder, files in it)."""

    def __init__(self, out: Path, project: str, config: dict, stage_offsets, logit_scale):
        super().__init__(stage_offsets, logit_scale)
        try:
            import wandb
        except ImportError:
            raise ConfigError("logging.wandb needs wandb installed: pip install wandb (or --report-to tensorboard)") from None
        self._start = lambda: wandb.init(project=project, name=out.name, dir=str(out), config=config)
        self.run = None

    def write(self, values, step):
        if self.run is None:
            self.run = self._start()
        self.run.log({**values, "global_step": step})

    def close(self):
        if self.run is not None:
            self.run.finish()
            self.run = None
