"""Phase plan and probe sets, fixed before training from the config's datasets.

* ``stage0``: None (the initial model is the pretrained one) or ``{dataset, where}`` trained first.
* ``phases``: ``{dataset, where}`` plus one of ``split_by: column`` (one phase per value; ``order`` optional),
  ``random_slices: n`` (seeded equal slices of the images; ``slice_seed``), ``lists: [[image_id, ...], ...]``;
  or ``list: [{name?, dataset, where}, ...]`` for phases drawn from several datasets.
* ``probes``: ``[{name, dataset, where, sample?, seed?, domain?}]``; ``sample: n`` keeps a seeded subset of n images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from spatial_disorder.run import ProbeSet

from .data import filter_rows, item_ids, load_source
from .data.items import ItemSet
from .errors import ConfigError


@dataclass
class Phase:
    """One training stage: its stage name, a human label, and its caption table."""

    name: str
    label: str
    table: pd.DataFrame

    @property
    def n_images(self) -> int:
        return int(self.table["image_id"].nunique())


@dataclass
class Probe:
    probe: ProbeSet
    items: ItemSet


@dataclass
class Plan:
    stage0: Phase | None
    phases: list[Phase]
    probes: list[Probe] = field(default_factory=list)

    def describe(self) -> list[dict]:
        out = [{"stage": "stage0", "label": self.stage0.label if self.stage0 else "initial model", "images": self.stage0.n_images if self.stage0 else 0}]
        out += [{"stage": p.name, "label": p.label, "images": p.n_images} for p in self.phases]
        return out


class Sources:
    """Loads each named dataset once."""

    def __init__(self, specs: Mapping[str, Mapping[str, Any]]):
        self.specs, self._cache = specs, {}

    def get(self, name: str, what: str) -> pd.DataFrame:
        if name not in self.specs:
            raise ConfigError(f"{what}: unknown dataset {name!r} (declared: {', '.join(self.specs) or 'none'})")
        if name not in self._cache:
            self._cache[name] = load_source(name, self.specs[name])
        return self._cache[name]

    def select(self, spec: Mapping[str, Any], what: str) -> pd.DataFrame:
        if "dataset" not in spec:
            if len(self.specs) == 1:
                name = next(iter(self.specs))
            else:
                raise ConfigError(f"{what}: say which dataset")
        else:
            name = spec["dataset"]
        return filter_rows(self.get(name, what), spec.get("where"), what)


def _subset(table: pd.DataFrame, ids) -> pd.DataFrame:
    return table[table["image_id"].isin(set(map(str, ids)))].reset_index(drop=True)


def build_phases(spec: Mapping[str, Any] | None, sources: Sources) -> list[Phase]:
    if not spec:
        return []
    if "list" in spec:
        return [
            Phase(f"stage{k + 1}", p.get("name", f"phase {k + 1}"), sources.select(p, f"phases.list[{k}]"))
            for k, p in enumerate(spec["list"])
        ]
    table = sources.select(spec, "phases")
    chosen = [k for k in ("split_by", "random_slices", "lists") if spec.get(k) is not None]
    if len(chosen) != 1:
        raise ConfigError("phases: give exactly one of split_by, random_slices, lists (or a 'list' of phase specs)")
    if spec.get("split_by") is not None:
        col = spec["split_by"]
        if col not in table.columns:
            raise ConfigError(f"phases.split_by: no column {col!r}")
        values = [str(v) for v in spec.get("order") or sorted(pd.unique(table[col].astype(str)))]
        return [Phase(f"stage{k + 1}", f"{col}={v}", filter_rows(table, {col: v}, f"phases ({col}={v})")) for k, v in enumerate(values)]
    if spec.get("random_slices") is not None:
        n = int(spec["random_slices"])
        ids = item_ids(table)
        if not 1 <= n <= len(ids):
            raise ConfigError(f"phases.random_slices must be between 1 and the number of images ({len(ids)})")
        perm = np.random.default_rng(int(spec.get("slice_seed", 0))).permutation(len(ids))
        parts = np.array_split(perm, n)
        return [Phase(f"stage{k + 1}", f"slice {k + 1}/{n}", _subset(table, [ids[i] for i in sorted(part)])) for k, part in enumerate(parts)]
    phases = []
    for k, ids in enumerate(spec["lists"]):
        sub = _subset(table, ids)
        if len(sub) == 0:
            raise ConfigError(f"phases.lists[{k}]: none of its image ids are in the dataset")
        phases.append(Phase(f"stage{k + 1}", f"list {k + 1}", sub))
    return phases


def build_probe(spec: Mapping[str, Any], sources: Sources) -> Probe:
    name = spec.get("name")
    if not name:
        raise ConfigError("probes: every probe needs a name")
    table = sources.select(spec, f"probes.{name}")
    ids = item_ids(table)
    if spec.get("sample"):
        n = int(spec["sample"])
        if n < len(ids):
            keep = np.sort(np.random.default_rng(int(spec.get("seed", 0))).choice(len(ids), size=n, replace=False))
            ids = [ids[i] for i in keep]
            table = _subset(table, ids)
    items = ItemSet.from_table(table)
    domain = str(spec.get("domain", name))
    images = pd.DataFrame(
        {
            "id": items.ids,
            "image_path": [f"{s}::{i}" if s else i for i, s in zip(items.images, items.shards)],
            "domain": [domain] * len(items),
        }
    )
    try:
        probe = ProbeSet.from_captions(name, images, items.captions)
    except ValueError as exc:
        raise ConfigError(f"probes.{name}: {exc}") from None
    return Probe(probe, items)


def build_plan(config: Mapping[str, Any]) -> Plan:
    sources = Sources(config["datasets"])
    stage0 = None
    if config.get("stage0"):
        s0 = config["stage0"]
        stage0 = Phase("stage0", s0.get("name", "stage 0"), sources.select(s0, "stage0"))
    phases = build_phases(config.get("phases"), sources)
    probes = [build_probe(p, sources) for p in config["probes"]]
    names = [p.probe.name for p in probes]
    if len(set(names)) != len(names):
        raise ConfigError(f"probes: duplicate probe names in {names}")
    return Plan(stage0, phases, probes)
