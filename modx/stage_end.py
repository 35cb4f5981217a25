"""End of a stage: embed every probe set with the model that ended it, score retrieval, describe the stage.

Probe images are decoded and captions tokenised once per run (the probe sets never change); each stage then
pays only the two forward passes and the retrieval scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import TrainSettings
from .embed import PreparedItems, embed_probe_sets, retrieval
from .plan import Phase, Probe


@dataclass
class StageEmbedding:
    """The probe arrays of one stage, their retrieval scores and the seconds it took."""

    arrays: dict[str, dict[str, np.ndarray]]
    retrieval: dict[str, dict[str, float]]
    seconds: float


class ProbeEmbedder:
    """Embeds the run's probe sets at every stage end (inputs prepared on first use, then reused)."""

    def __init__(self, probes: list[Probe], bundle, device, precision: str, batch_size: int):
        self.probes, self.bundle = probes, bundle
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self._prepared: dict[str, PreparedItems] = {}

    def _inputs(self, probe: Probe) -> PreparedItems:
        name = probe.probe.name
        if name not in self._prepared:
            self._prepared[name] = PreparedItems(probe.items, self.bundle.eval_transform, self.bundle.tokenizer, self.batch_size)
        return self._prepared[name]

    def __call__(self, model) -> StageEmbedding:
        t0 = time.perf_counter()
        arrays = embed_probe_sets(model, {p.probe.name: self._inputs(p) for p in self.probes}, self.device, self.precision,
                                  self.batch_size)
        scores = {}
        for p in self.probes:
            a = arrays[p.probe.name]
            scores[p.probe.name] = retrieval(a["image"], a["text"], p.probe.text_to_image)
        return StageEmbedding(arrays, scores, time.perf_counter() - t0)


def stage_meta(k: int, phase: Phase | None, mode: str, hp: TrainSettings, pos, n_images: int, emb: StageEmbedding) -> dict[str, Any]:
    """The stage's metadata (docs/training.md, "What a run holds")."""
    return {
        "phase": phase.label if phase is not None else "initial model",
        "stage_index": k,
        "mode": mode if k > 0 else "finetune",
        "trained": phase is not None,
        "epochs": hp.epochs if phase is not None else 0,
        "steps": pos.step,
        "images": n_images if phase is not None else 0,
        "loss_curve": pos.curve,
        "epoch_loss": pos.epoch_loss,
        "retrieval": emb.retrieval,
        "train_seconds": round(pos.train_seconds, 3),
        "embed_seconds": round(emb.seconds, 3),
        "checkpoint": f"checkpoints/stage{k}.pt",
    }
