"""Training configuration as data: defaults, YAML/TOML loading, dotted ``key=value`` overrides, validation.

``load_config(path, overrides)`` returns the resolved config as a plain nested dict: the form saved into the
run (``config.yaml`` and the run metadata) and compared on ``--resume``. ``resolve(config)`` turns it, once,
into the typed :class:`RunConfig` the runner reads by attribute (stage-0 settings included, see
:meth:`RunConfig.stage_settings`). Every unknown key and bad value is a one-line :class:`ConfigError` naming
the full key path (and, through ``load_config``, the file).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

MODES = ("finetune", "modx", "joint", "feature_distill")
PIECES = ("clip", "modx", "feature_distill")
FORMATS = ("csv", "tsv", "coco", "karpathy", "wds")
MODE_PIECES = {"finetune": ("clip",), "joint": ("clip",), "modx": ("clip", "modx"), "feature_distill": ("clip", "feature_distill")}

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
    "logging": {  # training scalars besides train_log.jsonl (also: modx-train --report-to tensorboard,wandb)
        "tensorboard": False,  # event files in RUN/tensorboard (needs the tensorboard package)
        "wandb": False,  # a Weights & Biases run (needs wandb installed and logged in)
        "wandb_project": "modx",
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
RESUME_SAFE_KEYS = ("output", "train.progress", "train.num_workers", "logging")  # a section: every key in it


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
    return list(config["train"].get("pieces") or MODE_PIECES[config["train"]["mode"]])


def validate(config: dict) -> dict:
    """Check every section (keys and values) of a merged config; returns it with dataset formats filled in."""
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
    resolve(config)
    if not config["probes"]:
        raise ConfigError("probes: declare at least one probe set (the stages embed them)")
    if config["phases"] is None and config["stage0"] is None and config["model"]["pretrained"] is None:
        raise ConfigError("nothing to train: set phases and/or stage0 (or a pretrained model to embed)")
    return config


# --- typed config -------------------------------------------------------------------------------------


def _int(value: Any, key: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, not {value!r}")
    return value


def _number(value: Any, key: str, low: float = 0.0, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value < float("inf")
    if not ok or (positive and value <= 0):
        what = "> 0" if positive else "a finite non-negative number"
        raise ConfigError(f"{key} must be {what}, not {value!r}")
    return float(value)


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, not {value!r}")
    return value


def _choice(value: Any, key: str, choices: Sequence[str]) -> str:
    if value not in choices:
        allowed = f"{choices[0]!r} or {choices[1]!r}" if len(choices) == 2 else f"one of {list(choices)}"
        raise ConfigError(f"{key} must be {allowed}, not {value!r}")
    return value


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the open_clip architecture, its initial weights, training augmentation, embedding batch."""

    name: str
    pretrained: str | None
    augment: bool
    embed_batch_size: int


@dataclass(frozen=True)
class TrainSettings:
    """``train`` (and, for stage 0, ``stage0``'s overrides): optimisation, schedule, logging, checkpoints."""

    mode: str
    pieces: tuple[str, ...]
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    warmup: float
    grad_clip: float
    drop_last: bool
    num_workers: int
    log_every: int
    checkpoint_every: int
    progress: bool


@dataclass(frozen=True)
class ModXLoss:
    """``loss.modx``: weight, softmax temperature, row reduction, diagonal, teacher cache (docs/training.md)."""

    alpha: float
    temperature: float
    reduction: str
    include_diagonal: bool
    teacher_cache: bool


@dataclass(frozen=True)
class FeatureDistillLoss:
    """``loss.feature_distill``: weight and kind (cosine or l2)."""

    weight: float
    kind: str


@dataclass(frozen=True)
class LoggingConfig:
    """``logging``: TensorBoard event files and a Weights & Biases run, both off by default."""

    tensorboard: bool
    wandb: bool
    wandb_project: str


@dataclass(frozen=True)
class Stage0Config:
    """``stage0``: the data stage 0 trains on; numeric settings left as None fall back to ``train``."""

    dataset: str | None
    where: Mapping[str, Any] | None
    name: str
    epochs: int | None
    lr: float | None
    batch_size: int | None
    warmup: float | None
    weight_decay: float | None


@dataclass(frozen=True)
class RunConfig:
    """The resolved config, typed. ``data`` keeps the plain dict (saved with the run, compared on resume);
    ``datasets``, ``phases`` and ``probes`` stay data for the phase plan (``modx.plan``)."""

    output: Path
    seed: int
    device: str
    precision: str
    deterministic: bool
    model: ModelConfig
    train: TrainSettings
    modx: ModXLoss
    feature_distill: FeatureDistillLoss
    stage0: Stage0Config | None
    logging: LoggingConfig
    data: Mapping[str, Any]

    @property
    def mode(self) -> str:
        return self.train.mode

    @property
    def pieces(self) -> list[str]:
        return list(self.train.pieces)

    @property
    def loss(self) -> Mapping[str, Any]:
        """The ``loss`` section as data, for ``modx.losses.make_pieces``."""
        return self.data["loss"]

    def stage_settings(self, k: int) -> TrainSettings:
        """The settings of stage ``k``: ``train``, with ``stage0``'s epochs / lr / batch / warm-up / decay for stage 0."""
        if k != 0 or self.stage0 is None:
            return self.train
        s0 = self.stage0
        overrides = {key: getattr(s0, key) for key in ("epochs", "lr", "batch_size", "warmup", "weight_decay")}
        return replace(self.train, **{key: value for key, value in overrides.items() if value is not None})


def _train_settings(t: Mapping[str, Any]) -> TrainSettings:
    mode = _choice(t["mode"], "train.mode", MODES)
    pieces = t["pieces"] or MODE_PIECES[mode]
    for piece in pieces:
        if piece not in PIECES:
            raise ConfigError(f"train.pieces: unknown loss piece {piece!r} (known: {list(PIECES)})")
    betas = t["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), not {betas!r}")
    return TrainSettings(
        mode=mode, pieces=tuple(pieces), epochs=_int(t["epochs"], "train.epochs", 0),
        batch_size=_int(t["batch_size"], "train.batch_size", 2), lr=_number(t["lr"], "train.lr"),
        weight_decay=_number(t["weight_decay"], "train.weight_decay"), betas=(float(betas[0]), float(betas[1])),
        eps=_number(t["eps"], "train.eps"), warmup=_number(t["warmup"], "train.warmup"),
        grad_clip=_number(t["grad_clip"], "train.grad_clip"), drop_last=_bool(t["drop_last"], "train.drop_last"),
        num_workers=_int(t["num_workers"], "train.num_workers", 0), log_every=max(1, _int(t["log_every"], "train.log_every", 0)),
        checkpoint_every=_int(t["checkpoint_every"], "train.checkpoint_every", 0), progress=_bool(t["progress"], "train.progress"),
    )


def _stage0(s0: Mapping[str, Any] | None) -> Stage0Config | None:
    if s0 is None:
        return None

    def opt(key, check):
        return None if s0.get(key) is None else check(s0[key], f"stage0.{key}")

    return Stage0Config(
        dataset=s0.get("dataset"), where=s0.get("where"), name=str(s0.get("name", "stage 0")),
        epochs=opt("epochs", lambda v, k: _int(v, k, 0)), lr=opt("lr", _number),
        batch_size=opt("batch_size", lambda v, k: _int(v, k, 2)), warmup=opt("warmup", _number),
        weight_decay=opt("weight_decay", _number),
    )


def resolve(config: Mapping[str, Any]) -> RunConfig:
    """The typed form of a merged config dict; bad values raise one-line errors naming the key."""
    m, loss = config["model"], config["loss"]
    if not isinstance(m["name"], str) or not m["name"]:
        raise ConfigError(f"model.name must be a model name, not {m['name']!r}")
    if m["pretrained"] is not None and not isinstance(m["pretrained"], str):
        raise ConfigError(f"model.pretrained must be a tag, a path or null, not {m['pretrained']!r}")
    for key in ("probes",):
        for k, probe in enumerate(config[key]):
            if probe.get("sample") is not None:
                _int(probe["sample"], f"probes[{k}].sample", 1)
            if probe.get("seed") is not None:
                _int(probe["seed"], f"probes[{k}].seed", 0)
    mx, fd, lg = loss["modx"], loss["feature_distill"], config["logging"]
    return RunConfig(
        output=Path(config["output"]), seed=_int(config["seed"], "seed", 0), device=str(config["device"]),
        precision=_choice(config["precision"], "precision", ("auto", "fp32", "bf16")),
        deterministic=_bool(config["deterministic"], "deterministic"),
        model=ModelConfig(m["name"], m["pretrained"], _bool(m["augment"], "model.augment"),
                          _int(m["embed_batch_size"], "model.embed_batch_size", 1)),
        train=_train_settings(config["train"]),
        modx=ModXLoss(_number(mx["alpha"], "loss.modx.alpha"), _number(mx["temperature"], "loss.modx.temperature", positive=True),
                      _choice(mx["reduction"], "loss.modx.reduction", ("sum", "mean")),
                      _bool(mx["include_diagonal"], "loss.modx.include_diagonal"), _bool(mx["teacher_cache"], "loss.modx.teacher_cache")),
        feature_distill=FeatureDistillLoss(_number(fd["weight"], "loss.feature_distill.weight"),
                                           _choice(fd["kind"], "loss.feature_distill.kind", ("cosine", "l2"))),
        stage0=_stage0(config["stage0"]),
        logging=LoggingConfig(_bool(lg["tensorboard"], "logging.tensorboard"), _bool(lg["wandb"], "logging.wandb"),
                              str(lg["wandb_project"])),
        data=config,
    )


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
    def safe(key: str) -> bool:
        return any(key == s or key.startswith(f"{s}.") for s in RESUME_SAFE_KEYS)

    return sorted(k for k in set(old) | set(new) if old.get(k, _MISSING) != new.get(k, _MISSING) and not safe(k))


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
