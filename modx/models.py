"""Model factory: open_clip model names or the packaged JSON configs, with pretrained tags or local checkpoints."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from .errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "model_configs"


def register_packaged_configs() -> None:
    """Make the tiny JSON configs shipped with modx known to open_clip (idempotent)."""
    if "modx-tiny-vit-32" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


@dataclass
class ModelBundle:
    """A model with its eval/train image transforms and tokenizer."""

    model: torch.nn.Module
    train_transform: Callable
    eval_transform: Callable
    tokenizer: Callable
    name: str


def _extract_state_dict(obj: Any) -> dict:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ConfigError("checkpoint does not hold a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a local checkpoint (plain state dict, open_clip's {'state_dict': ...}, or ours {'model': ...})."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    state = _extract_state_dict(obj)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{path}: checkpoint does not fit the model (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip logs a warning for every randomly initialised model; expected here (tiny models, teachers)."""
    root = logging.getLogger()
    flt = _DropRandomInitNotice()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def create(name: str, pretrained: str | None = None, augment: bool = False) -> ModelBundle:
    """Build an open_clip model; ``pretrained`` is an open_clip tag or the path of a local checkpoint."""
    register_packaged_configs()
    if name not in open_clip.list_models():
        raise ConfigError(f"model.name {name!r} is neither an open_clip model nor a packaged config")
    local = pretrained is not None and (Path(pretrained).suffix in (".pt", ".pth", ".bin") or Path(pretrained).exists())
    tag = None if (pretrained is None or local) else pretrained
    if local and not Path(pretrained).is_file():
        raise ConfigError(f"{pretrained}: pretrained checkpoint not found")
    aug_cfg = {"scale": (0.8, 1.0)}
    try:
        with _quiet_random_init():
            model, train_tf, eval_tf = open_clip.create_model_and_transforms(name, pretrained=tag, aug_cfg=aug_cfg)
    except RuntimeError as exc:
        raise ConfigError(f"model {name!r} with pretrained={tag!r}: {str(exc).splitlines()[0]}") from None
    if local:
        load_weights(model, pretrained)
    tokenizer = open_clip.get_tokenizer(name)
    return ModelBundle(model, train_tf if augment else eval_tf, eval_tf, tokenizer, name)
