"""Loss pieces the runner composes: the symmetric CLIP loss, the Mod-X term, feature distillation.

Every piece receives a :class:`Batch` of L2-normalised features over the GLOBAL batch (gathered across
ranks) and returns a scalar; the runner sums ``weight * piece`` over the configured pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    """Normalised features of one global batch: the student's (with grad) and optionally the teacher's."""

    image: torch.Tensor
    text: torch.Tensor
    logit_scale: torch.Tensor
    teacher_image: torch.Tensor | None = None
    teacher_text: torch.Tensor | None = None


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: mean of cross-entropy image->text and text->image, targets on the diagonal."""
    logits = logit_scale * image @ text.T
    labels = torch.arange(image.shape[0], device=image.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _modx_direction(old: torch.Tensor, new: torch.Tensor, temperature: float, reduction: str, include_diagonal: bool) -> torch.Tensor:
    n = old.shape[0]
    rows = torch.arange(n, device=old.device)
    keep = old.argmax(dim=1) == rows  # screening: the old model must rank the paired item first
    old, new, kept = old[keep] / temperature, new[keep] / temperature, rows[keep]
    if kept.numel() == 0:
        return new.sum() * 0.0
    if not include_diagonal:
        diag = torch.zeros_like(old, dtype=torch.bool)
        diag[torch.arange(kept.numel(), device=old.device), kept] = True
        old = old.masked_fill(diag, float("-inf"))
        new = new.masked_fill(diag, float("-inf"))
    log_p = F.log_softmax(old, dim=1)
    log_q = F.log_softmax(new, dim=1)
    terms = log_p.exp() * (log_p - log_q)
    if not include_diagonal:
        terms = terms.masked_fill(diag, 0.0)
    per_row = terms.sum(dim=1)
    return per_row.sum() if reduction == "sum" else per_row.mean()


def modx_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "sum",
    include_diagonal: bool = True,
) -> torch.Tensor:
    """Mod-X off-diagonal distillation (Ni et al., ICML 2023), on raw cosines divided by ``temperature``.

    For each direction (image->text rows of ``image @ text.T``, and text->image rows of its transpose), rows
    where the teacher's row does not peak on the diagonal are screened out; each kept row contributes
    KL(softmax(teacher_row / T) || softmax(student_row / T)); rows are summed (``reduction="sum"``, the
    authors' default) or averaged (``"mean"``); the two directions are averaged. With
    ``include_diagonal=False`` both distributions are taken over the off-diagonal entries only.
    """
    old = (teacher_image @ teacher_text.T).detach()
    new = image @ text.T
    args = (temperature, reduction, include_diagonal)
    return 0.5 * (_modx_direction(old, new, *args) + _modx_direction(old.T, new.T, *args))


def feature_distill_loss(image, text, teacher_image, teacher_text, kind: str = "cosine") -> torch.Tensor:
    """Pull each new normalised embedding towards the teacher's: mean (1 - cos) or mean squared L2, both towers averaged."""
    def one(a, b):
        b = b.detach()
        return (1 - (a * b).sum(dim=1)).mean() if kind == "cosine" else ((a - b) ** 2).sum(dim=1).mean()

    return 0.5 * (one(image, teacher_image) + one(text, teacher_text))


class ClipPiece:
    name, needs_teacher = "clip", False

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def __call__(self, b: Batch) -> torch.Tensor:
        return clip_loss(b.image, b.text, b.logit_scale)


class ModXPiece:
    name, needs_teacher = "modx", True

    def __init__(self, alpha: float = 20.0, temperature: float = 1.0, reduction: str = "sum", include_diagonal: bool = True):
        self.weight, self.temperature, self.reduction, self.include_diagonal = alpha, temperature, reduction, include_diagonal

    def __call__(self, b: Batch) -> torch.Tensor:
        return modx_loss(b.image, b.text, b.teacher_image, b.teacher_text, self.temperature, self.reduction, self.include_diagonal)


class FeatureDistillPiece:
    name, needs_teacher = "feature_distill", True

    def __init__(self, weight: float = 1.0, kind: str = "cosine"):
        self.weight, self.kind = weight, kind

    def __call__(self, b: Batch) -> torch.Tensor:
        return feature_distill_loss(b.image, b.text, b.teacher_image, b.teacher_text, self.kind)


def make_pieces(names: list[str], loss_cfg: dict) -> list:
    """Build the configured pieces (``clip``, ``modx``, ``feature_distill``)."""
    out = []
    for name in names:
        if name == "clip":
            out.append(ClipPiece())
        elif name == "modx":
            m = loss_cfg["modx"]
            out.append(ModXPiece(float(m["alpha"]), float(m["temperature"]), m["reduction"], bool(m["include_diagonal"])))
        elif name == "feature_distill":
            f = loss_cfg["feature_distill"]
            out.append(FeatureDistillPiece(float(f["weight"]), f["kind"]))
        else:
            raise ValueError(f"unknown loss piece {name!r}")
    return out


def total_loss(pieces: list, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of weighted pieces, and each piece's unweighted value for the log."""
    total, logs = None, {}
    for piece in pieces:
        if piece.needs_teacher and (batch.teacher_image is None or batch.teacher_text is None):
            continue  # stage 0 and the first stage have no teacher
        value = piece(batch)
        logs[piece.name] = float(value.detach())
        total = piece.weight * value if total is None else total + piece.weight * value
    return total, logs
