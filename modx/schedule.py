"""Learning-rate schedule: linear warm-up then cosine decay, per phase; a pure function of the step."""

from __future__ import annotations

import math


def warmup_steps(warmup: float, total: int) -> int:
    """``warmup`` < 1 is a fraction of the phase's steps; >= 1 a number of steps."""
    return int(round(warmup * total)) if warmup < 1 else int(warmup)


def lr_at(step: int, base_lr: float, total: int, warmup: int) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span))) * base_lr
