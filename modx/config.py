"""Training configuration as data: defaults, YAML/TOML loading, dotted ``key=value`` overrides, validation.

A config is a plain nested dict. ``load_config(path, overrides)`` returns the resolved dict that the
runner uses and that is saved into the run (``config.yaml`` and the run metadata).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

MODES = ("finetune", "modx", "joint", "feature_distill")
PIECES = ("clip", "modx", "feature_distill")
FORMATS = ("csv", "tsv", "coco", "karpathy", "wds")

DEFAULTS: dict[str, Any] = {
    "output": "runs/modx-run",
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "precision": "auto",  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    "deterministic": True,
    "model": {
        "name": "modx-tiny-vit-32",
        "pretrained": None,  # open_clip tag, or a local checkpoint path (weights-only loading)
        "augment": False,  # random resized crop during training (teacher cache is exact only without it)
        "embed_batch_size": 256,
    },
    "datasets": {},  # name -> {format, path, ...}; see docs/training.md
    "stage0": None,  # None: stage 0 is the initial (pretrained) model; or {dataset, where, epochs, lr}
    "phases": None,  # {dataset, where, split_by | random_slices | lists} or {list: [{name, dataset, where}, ...]}
    "probes": [],  # [{name, dataset, where, sample, seed}]
    "train": {
        "mode": "finetune",
        "pieces": None,  # explicit loss pieces; default derived from mode
        "epochs": 1,
        "batch_size": 32,  # global batch (split over ranks under torchrun)
        "lr": 5e-4,
        "weight_decay": 0.2,
        "betas": [0.9, 0.98],
        "eps": 1e-6,
        "warmup": 0.2,  # fraction of the phase's steps (< 1) or a number of steps (>= 1)
        "grad_clip": 1.0,  # max global grad norm; 0 disables
        "drop_last": True,
        "num_workers": 0,
        "log_every": 10,  # steps between loss-curve points
        "checkpoint_every": 0,  # steps between mid-phase checkpoints; 0 = stage ends only
        "progress": True,
    },
    "loss": {
        "modx": {"alpha": 20.0, "temperature": 1.0, "reduction": "sum", "include_diagonal": True, "teacher_cache": False},
        "feature_distill": {"weight": 1.0, "kind": "cosine"},
    },
}

FREE_KEYS = {"datasets", "stage0", "phases", "probes"}  # free-form sections, checked by ``check_free_sections``

# Keys each free-form section accepts (docs/training.md); anything else is a typo and an error.
STAGE0_KEYS = ("dataset", "where", "name", "epochs", "lr", "batch_size", "warmup", "weight_decay")
PHASES_KEYS = ("dataset", "where", "split_by", "order", "random_slices", "slice_seed", "lists", "list")
PHASE_ITEM_KEYS = ("name", "dataset", "where")
PROBE_KEYS = ("name", "dataset", "where", "sample", "seed", "domain")
DATASET_KEYS = {
    "csv": ("format", "path", "img_key", "caption_key", "sep", "image_id_key", "root"),
    "tsv": ("format", "path", "img_key", "caption_key", "sep", "image_id_key", "root"),
    "coco": ("format", "path", "image_root"),
    "karpathy": ("format", "path", "image_root"),
    "wds": ("format", "path", "caption_key"),
}
# Keys that may differ between a run and the config that resumes it: they change no number of the run.
RESUME_SAFE_KEYS = ("output", "train.progress", "train.num_workers")


def deep_merge(base: Mapping, update: Mapping, where: str = "") -> dict:
    """Return ``base`` updated by ``update``; unknown keys of fixed sections are errors."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in out and where.split(".")[0] not in FREE_KEYS:
            raise ConfigError(f"unknown config key {path!r}")
        if isinstance(out.get(key), dict) and isinstance(value, Mapping) and key not in FREE_KEYS:
            out[key] = deep_merge(out[key], value, f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: cannot parse config ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping at the top level")
    base = data.pop("extends", None)
    if base is not None:  # a variant: the named file (relative to this one) updated by this file's keys
        data = _merge_free(read_config_file(path.parent / base), data)
    return data


def _merge_free(base: Mapping, update: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(out.get(key), dict) and isinstance(value, Mapping) and key not in ("phases", "stage0"):
            out[key] = _merge_free(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (["train", "lr"], 0.0001); values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {item!r} has an empty key")
    import yaml

    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except Exception:
        value = raw
    if isinstance(value, str) and _looks_float(value):
        value = float(value)
    return keys, value


def _looks_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in "e.")


def apply_override(config: dict, keys: Sequence[str], value: Any) -> None:
    node = config
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            if key in node and node[key] is not None and not isinstance(node[key], dict):
                raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a section")
            if key not in node and keys[0] not in FREE_KEYS:
                raise ConfigError(f"unknown config key {'.'.join(keys[: i + 1])!r}")
            node[key] = {}
        node = node[key]
    if keys[-1] not in node and keys[0] not in FREE_KEYS:
        raise ConfigError(f"unknown config key {'.'.join(keys)!r}")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), data: Mapping | None = None) -> dict:
    """Defaults <- file (or ``data``) <- overrides, then validated. Returns the resolved config."""
    user = read_config_file(path) if path is not None else dict(data or {})
    try:
        config = deep_merge(DEFAULTS, user)
    except ConfigError as exc:  # name the file the bad key came from
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None
    for item in overrides:
        keys, value = parse_override(item)
        apply_override(config, keys, value)
    try:
        return validate(config)
    except ConfigError as exc:
        where = f"{path} with overrides" if overrides else str(path)
        raise ConfigError(f"{where}: {exc}" if path is not None and str(path) not in str(exc) else str(exc)) from None


def pieces_for(config: Mapping) -> list[str]:
    """The loss pieces the runner composes for this config (explicit ``train.pieces`` or derived from mode)."""
    explicit = config["train"].get("pieces")
    if explicit:
        return list(explicit)
    mode = config["train"]["mode"]
    return {"finetune": ["clip"], "joint": ["clip"], "modx": ["clip", "modx"], "feature_distill": ["clip", "feature_distill"]}[mode]


def validate(config: dict) -> dict:
    t = config["train"]
    if t["mode"] not in MODES:
        raise ConfigError(f"train.mode must be one of {list(MODES)}, not {t['mode']!r}")
    for piece in pieces_for(config):
        if piece not in PIECES:
            raise ConfigError(f"train.pieces: unknown loss piece {piece!r} (known: {list(PIECES)})")
    for key in ("epochs", "batch_size"):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < (0 if key == "epochs" else 2):
            raise ConfigError(f"train.{key} must be an integer >= {0 if key == 'epochs' else 2}, not {t[key]!r}")
    for key in ("lr", "weight_decay", "warmup", "grad_clip", "eps"):
        if not isinstance(t[key], (int, float)) or isinstance(t[key], bool) or not 0 <= t[key] < float("inf"):
            raise ConfigError(f"train.{key} must be a finite non-negative number, not {t[key]!r}")
    m = config["loss"]["modx"]
    if m["reduction"] not in ("sum", "mean"):
        raise ConfigError(f"loss.modx.reduction must be 'sum' or 'mean', not {m['reduction']!r}")
    if not isinstance(m["temperature"], (int, float)) or m["temperature"] <= 0:
        raise ConfigError(f"loss.modx.temperature must be > 0, not {m['temperature']!r}")
    if config["loss"]["feature_distill"]["kind"] not in ("cosine", "l2"):
        raise ConfigError("loss.feature_distill.kind must be 'cosine' or 'l2'")
    if config["precision"] not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision must be auto, fp32 or bf16, not {config['precision']!r}")
    if not isinstance(config["datasets"], dict):
        raise ConfigError("datasets must be a mapping of name -> dataset spec")
    for name, spec in config["datasets"].items():
        if not isinstance(spec, dict) or "path" not in spec:
            raise ConfigError(f"datasets.{name}: needs at least a 'path'")
        fmt = spec.get("format") or _guess_format(spec["path"])
        if fmt not in FORMATS:
            raise ConfigError(f"datasets.{name}.format must be one of {list(FORMATS)}, not {fmt!r}")
        spec["format"] = fmt
    check_free_sections(config)
    if not config["probes"]:
        raise ConfigError("probes: declare at least one probe set (the stages embed them)")
    if config["phases"] is None and config["stage0"] is None and config["model"]["pretrained"] is None:
        raise ConfigError("nothing to train: set phases and/or stage0 (or a pretrained model to embed)")
    return config


def _check_keys(section: Any, allowed: Sequence[str], where: str) -> None:
    """``section`` must be a mapping whose keys are all in ``allowed``; the error names the full key path."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where} must be a mapping, not {type(section).__name__}")
    for key in section:
        if key not in allowed:
            raise ConfigError(f"unknown config key '{where}.{key}' (known: {', '.join(allowed)})")


def check_free_sections(config: Mapping) -> None:
    """Unknown keys inside ``datasets.*``, ``stage0``, ``phases`` (and ``phases.list[]``) and ``probes[]`` are errors."""
    for name, spec in config["datasets"].items():
        _check_keys(spec, DATASET_KEYS[spec["format"]], f"datasets.{name}")
    if config["stage0"] is not None:
        _check_keys(config["stage0"], STAGE0_KEYS, "stage0")
    phases = config["phases"]
    if phases is not None:
        _check_keys(phases, PHASES_KEYS, "phases")
        if "list" in phases:
            if not isinstance(phases["list"], list):
                raise ConfigError("phases.list must be a list of phase specs")
            for k, item in enumerate(phases["list"]):
                _check_keys(item, PHASE_ITEM_KEYS, f"phases.list[{k}]")
    if not isinstance(config["probes"], list):
        raise ConfigError("probes must be a list of probe specs")
    for k, probe in enumerate(config["probes"]):
        _check_keys(probe, PROBE_KEYS, f"probes[{k}]")


def flat_items(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``; lists and scalars are leaves (compared whole)."""
    if isinstance(config, Mapping) and config:
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(flat_items(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(config))}


def resume_changes(saved: Mapping, current: Mapping) -> list[str]:
    """Dotted keys whose value differs between a run's saved config and ``current``, safe keys left out."""
    old, new = flat_items(saved), flat_items(current)
    return sorted(k for k in set(old) | set(new) if old.get(k, _MISSING) != new.get(k, _MISSING) and k not in RESUME_SAFE_KEYS)


_MISSING = object()


def _guess_format(path: str) -> str:
    p = str(path).lower()
    if p.endswith(".tsv"):
        return "tsv"
    if p.endswith(".csv"):
        return "csv"
    if p.endswith(".tar") or "{" in p:
        return "wds"
    return "unknown (set format)"


def dump_yaml(config: Mapping) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)
