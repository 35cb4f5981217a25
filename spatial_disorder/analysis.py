"""Run-level analysis: every metric family for every probe set, modality and stage pair, as tidy frames.

The expensive step is one kNN search per stage, probe set and modality (and one blocked pass over the
caption x image cosines for retrieval); both are done once per stage and cached, and every pair metric
reuses them. Unit-normalised float32 copies of at most a few stages are held at once.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html import escape

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from .errors import InputError
from .jsonutil import clean, records
from .knn import Backend, as_unit_rows, check_k, get_backend
from .machine import usable_cores as _cores  # one name, patched by tests that pretend to have more cores
from .metrics.bridge_family import BRIDGE_CURVE_COLUMNS
from .metrics.continual import continual_from_retrieval
from .metrics.deviation import (
    DEFAULT_TEMPERATURE,
    KL_EXACT_MAX,
    KL_SAMPLE_ROWS,
    ContrastiveKL,
    centroid,
    contrastive_log_probs,
    kl_from_log_probs,
    kl_rows,
    paired_angles,
)
from .metrics.neighbours import overlap_from_indices
from .metrics.procrustes import (
    DEFAULT_FLOOR,
    Gram,
    gram,
    small_linalg,
)
from .metrics.registry import FAMILIES, ITEM_COLUMNS, METRICS
from .metrics.retrieval import (
    DEFAULT_KS,
    RetrievalRanks,
    check_text_to_image,
    retrieval_ranks,
    sampled_ranks,
    scores_from_ranks,
)
from .metrics.rotation import (
    EXACT_TOPOLOGY_MAX,
    check_pair,
    pair_angles,
    rotation_angles,
    topology_from_angles,
    topology_items,
)

MODALITIES = ("image", "text")
SUMMARY_COLUMNS = ["stage_a", "stage_b", "probe", "modality", "metric", "value"]
SPECTRUM_COLUMNS = ["stage_a", "stage_b", "probe", "kind", "centred", "index", "angle_deg", "variance_share", "dim", "variance_held"]
FAST_QUERIES = 1000
# Fast mode fits the Procrustes rotations on this many seeded rows per probe set and modality (all rows when fewer).
# Not lower: the fitted angle grows as rows are dropped (COCO-test shape, d = 512, captions stage0 -> stage5: 61.3 deg
# from all 25,000 rows, 66.9 from 20,000, 90.6 from 10,000, 127 from 5,000); experiments/bench_analyze.py prints
# the fast values beside the exact ones.
FAST_ROWS = 20000
# The symmetric kNN search (half the products, plus transposes and two heap updates per block) is off by
# default: on an idle 2-core machine, 12 searches of 100,000 x 512 took 566 s with it against 490 s with
# faiss query-by-query (experiments/bench_analyze.py). Set an item count to use it from that size on.
SYMMETRIC_MIN_ROWS: int | None = None
# ... but a search on one thread is another matter: there the symmetric search takes two thirds of the time (faiss,
# 25,000 x 512: 5.0 s against 7.5 s; numpy 5,000 x 512: 0.34 s against 0.66 s), so stages searched side by side on one
# thread each (``_analyse_pairs``) use it from this many rows on. The lists are the same up to the order of near-ties.
SYMMETRIC_ONE_THREAD_MIN_ROWS = 1000
# Cross-stage retrieval queries this many seeded images per cell (all when fewer) against the whole caption gallery:
# a compatibility matrix of every stage pair costs stages^2 retrieval passes, so it is sampled, with intervals.
CROSS_STAGE_QUERIES = 500
FAST_CROSS_STAGE_QUERIES = 200
CROSS_STAGE_MAX_STAGES = 16  # the full matrix is written up to this many stages (the pair metrics always)
N_TRAJECTORY_ITEMS = 6
# Probe sets of at most this many values each (items x d, the larger modality) are analysed on one BLAS/OpenMP thread: their
# products are too small for a second thread to help, and its spinning costs as much CPU again (the quickstart run,
# 3 sets of 1,200 captions x 64: the same wall time, 5.2 instead of 9.7 CPU s). A COCO-test set (25,000 x 512) uses them all.
SMALL_SET_VALUES = 1_000_000
# The normalised copies of at most ``cache_stages`` stages are kept, or of more while they hold at most this many bytes
# (the six stages of a COCO-test set hold 370 MB: none is normalised twice; a stage of 100,000 x 512 holds 400 MB).
CACHE_BYTES = 512 << 20
# Stage pairs of a larger set analysed at once, each in its own thread with its share of the cores (``_analyse_pairs``).
PAIR_THREADS = 2
# ... in exact mode only up to this many values per set: side by side, two stages' normalised copies, faiss indexes and
# full kNN lists are held at once (a COCO-test set, 25,000 captions x 512, is 12.8 million values). Above it the
# fixed per-pair cost is a small part of the searches anyway, and the exact analysis at 100,000 x 512 stays within its
# memory goal (docs/metrics.md). Fast mode holds less per stage: side by side at any size.
SIDE_BY_SIDE_MAX_VALUES = 1 << 24
# the run-level tables written to metrics.json (items and paired angles go to CSV only)
JSON_TABLES = ("summary", "retrieval", "continual", "spectra", "cross_stage", "trajectories", "bridge_curve")
FRAME_FIELDS = ("summary", "items", "retrieval", "spectra", "paired", "continual", "cross_stage", "trajectories", "bridge_curve")
CROSS_STAGE_COLUMNS = ["probe", "image_stage", "text_stage", "value", "ci_low", "ci_high", "queries"]
RETRIEVAL_COLUMNS = ["stage", "probe", "direction", "metric", "value", "ci_low", "ci_high"]
TRAJECTORY_COLUMNS = ["probe", "modality", "item", "label", "stage", "x", "y", "step_deg", "explained_pct"]


@dataclass
class RunAnalysis:
    """Everything measured on a run (or on two bare arrays): the one contract the report, ``compare`` and the gate read.

    Every table is a tidy pandas DataFrame; every number a report draws is in one of them (and in metrics.json).

    - ``summary``: [stage_a, stage_b, probe, modality, metric, value], one row per registered metric and pair.
    - ``items``: per-item values of every pair ([stage_a, stage_b, probe, modality, row, id] + the families' item
      columns: rotation, topology change, neighbour overlap, retrieval ranks and flips, paired angles, rigid share).
    - ``retrieval``: [stage, probe, direction, metric, value, ci_low, ci_high], R@K, median and mean rank, rsum per stage;
      the 95% interval of R@K from the sampled queries in fast mode, equal to the value when every query was ranked,
      NaN for the other scores.
    - ``spectra``: per-plane angles of the Procrustes rotations ([stage_a, stage_b, probe, kind, centred, index, ...]).
    - ``paired``: [stage, probe, row, id, paired_angle_deg], each caption's angle to its image per stage.
    - ``continual``: backward transfer and forgetting per probe set (metrics/continual.py).
    - ``cross_stage``: [probe, image_stage, text_stage, value, ci_low, ci_high, queries], image-to-text R@1 (%)
      with images from one stage and captions from another (sampled queries, 95% interval).
    - ``trajectories``: [probe, modality, item, label, stage, x, y, step_deg, explained_pct], a few items' paths.
    - ``bridge_curve``: [probe, stage_a, stage_b, calibration_images, method, direction, fit_texts, t2i_R@1, i2t_R@1,
      t2i_R@1_recovery, i2t_R@1_recovery, image_agreement, text_agreement, image_residual_frac, text_residual_frac,
      held_images, note], the bridge's learning curve from the reference stage to the last one: recovery and agreement
      against the number of calibration images, on one held-out set (docs/bridge.md).
    - ``meta``: settings and bookkeeping: backend, k, fast, seed, stages, pairs, probes, ref, timing_s, ...
    - ``probes``: probe tables (captions, image ids) by probe name, for labels; empty for ``analyze_arrays``.
    - ``text_to_image``: each caption's image row, by probe name.
    """

    summary: pd.DataFrame
    items: pd.DataFrame
    retrieval: pd.DataFrame
    spectra: pd.DataFrame
    paired: pd.DataFrame
    continual: pd.DataFrame
    meta: dict
    probes: dict = field(default_factory=dict, repr=False)
    cross_stage: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CROSS_STAGE_COLUMNS))
    trajectories: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TRAJECTORY_COLUMNS))
    text_to_image: dict = field(default_factory=dict, repr=False)
    bridge_curve: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=BRIDGE_CURVE_COLUMNS))

    @property
    def stages(self) -> list[str]:
        """Analysed stages, in run order."""
        return [str(s) for s in self.meta.get("stages", [])]

    @property
    def probe_names(self) -> list[str]:
        return [str(p) for p in self.meta.get("probes", [])]

    @property
    def k(self) -> int:
        """Neighbours of the kNN metrics (``meta["k"]``)."""
        return int(self.meta["k"])

    @property
    def fast(self) -> bool:
        """Whether queries were sampled (``meta["fast"]``)."""
        return bool(self.meta.get("fast", False))

    @property
    def ref(self) -> str:
        """The reference stage: the one the default pairs start from."""
        stages = self.stages
        return str(self.meta.get("ref") or (stages[0] if stages else ""))

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(str(a), str(b)) for a, b in self.meta.get("pairs", [])]

    def flipped_items(self, probe: str, stage_a: str, stage_b: str) -> pd.DataFrame:
        """Every caption (t2i) and image (i2t) whose rank-1 hit was lost or gained from a to b, with its caption.

        Columns: direction, change ("lost"/"gained"), row, id, caption, rank_a, rank_b (an image shows its first
        caption). Read from ``items``; in fast mode only the sampled queries have ranks.
        """
        cols = ["direction", "change", "row", "id", "caption", "rank_a", "rank_b"]
        it = self.items
        if "flip_lost" not in it.columns:
            return pd.DataFrame(columns=cols)
        sel = it[(it["stage_a"] == stage_a) & (it["stage_b"] == stage_b) & (it["probe"] == probe)]
        ps = self.probes.get(probe)
        captions = ps.texts["caption"].astype(str).to_numpy() if ps is not None and "caption" in ps.texts else None
        first = {}
        for j, i in enumerate(self.text_to_image.get(probe, [])):
            first.setdefault(int(i), j)
        frames = []
        for direction, modality in (("t2i", "text"), ("i2t", "image")):
            m = sel[sel["modality"] == modality]
            for change, column in (("lost", "flip_lost"), ("gained", "flip_gained")):
                f = m[m[column] == 1]
                rows = f["row"].to_numpy(int)
                text_rows = rows if modality == "text" else np.array([first.get(int(r), -1) for r in rows], dtype=int)
                cap = captions[text_rows] if captions is not None and len(rows) and (text_rows >= 0).all() else [""] * len(rows)
                frames.append(pd.DataFrame({"direction": direction, "change": change, "row": rows, "id": f["id"].astype(str).to_numpy(),
                                            "caption": cap, "rank_a": f["rank_a"].to_numpy(float), "rank_b": f["rank_b"].to_numpy(float)}))
        return pd.concat(frames, ignore_index=True)[cols]

    def metric_names(self) -> list[str]:
        return list(dict.fromkeys(self.summary["metric"]))

    def value(self, metric: str, stage_a=None, stage_b=None, probe=None, modality=None) -> float:
        """One summary value (the first match), for quick checks in notebooks and tests."""
        s = self.summary[self.summary["metric"] == metric]
        for col, v in (("stage_a", stage_a), ("stage_b", stage_b), ("probe", probe), ("modality", modality)):
            if v is not None:
                s = s[s[col] == v]
        if s.empty:
            raise KeyError(f"no value for metric {metric!r} with that selection")
        return float(s["value"].iloc[0])

    def matrix(self, metric: str, probe: str, modality: str) -> pd.DataFrame:
        """Stage x stage matrix (rows stage_a, columns stage_b) of one summary metric."""
        s = self.summary[(self.summary["metric"] == metric) & (self.summary["probe"] == probe) & (self.summary["modality"] == modality)]
        order = self.meta.get("stages", [])
        m = s.pivot(index="stage_a", columns="stage_b", values="value")
        return m.reindex(index=[x for x in order if x in m.index], columns=[x for x in order if x in m.columns])

    def retrieval_matrix(self, metric: str = "R@1", direction: str = "t2i") -> pd.DataFrame:
        """Stage x probe table of one retrieval metric (rows in stage order)."""
        r = self.retrieval[(self.retrieval["metric"] == metric) & (self.retrieval["direction"] == direction)]
        m = r.pivot(index="stage", columns="probe", values="value")
        return m.reindex([x for x in self.meta.get("stages", []) if x in m.index])

    def item_frame(self, stage_a: str, stage_b: str, probe: str, modality: str) -> pd.DataFrame:
        """Per-item values of one stage pair, joined to the probe table (captions, image ids) when known."""
        it = self.items
        sel = it[(it["stage_a"] == stage_a) & (it["stage_b"] == stage_b) & (it["probe"] == probe) & (it["modality"] == modality)]
        sel = sel.dropna(axis=1, how="all").reset_index(drop=True)
        ps = self.probes.get(probe)
        if ps is None:
            return sel
        table = (ps.images if modality == "image" else ps.texts).drop(columns=["id"]).copy()
        table["row"] = np.arange(len(table))
        return sel.merge(table, on="row", how="left")

    @classmethod
    def combine(cls, parts: list[RunAnalysis]) -> RunAnalysis:
        """One analysis from analyses of the same run, stages and settings over disjoint probe sets (``analyze_run(run,
        probes=[p])`` for each p, e.g. to draw one set's figures while the next is analysed). Every table is the parts'
        tables one after another, as ``analyze_run`` over all the sets writes them (the sets' metrics are independent and
        every sample is seeded per set and modality), but ``continual``, whose "all" rows average over the sets, is computed
        again; ``meta`` joins the per-set entries and adds up the timings."""
        if not parts:
            raise ValueError("combine needs at least one analysis")
        names = [p for part in parts for p in part.probe_names]
        if len(set(names)) != len(names):
            raise ValueError(f"the analyses share probe sets: {names}")
        tables = {}
        for name in FRAME_FIELDS:
            frames = [getattr(part, name) for part in parts]
            full = [f for f in frames if len(f)]
            tables[name] = pd.concat(full, ignore_index=True) if len(full) > 1 else (full[0] if full else frames[0]).reset_index(drop=True)
        meta: dict = {}
        for key in dict.fromkeys(k for part in parts for k in part.meta):
            values = [part.meta.get(key) for part in parts]
            if key == "probes":
                meta[key] = names
            elif key == "total_s":
                meta[key] = round(sum(v or 0.0 for v in values), 3)
            elif key == "timing_s":
                meta[key] = {k: round(sum((v or {}).get(k, 0.0) for v in values), 3) for k in dict.fromkeys(k for v in values for k in (v or {}))}
            elif all(isinstance(v, dict) for v in values) and any(v != values[0] for v in values):
                meta[key] = {k: x for v in values for k, x in v.items()}  # per-set entries ("probe/modality" keys)
            elif any(v != values[0] for v in values):
                raise ValueError(f"the analyses differ in their setting {key!r}: {values}")
            else:
                meta[key] = values[0]
        # the continual table's "all" rows average over every set: recomputed from the joined retrieval table
        tables["continual"] = continual_from_retrieval(tables["retrieval"], [str(x) for x in meta.get("stages", [])], meta.get("learned_at"))
        return cls(**tables, meta=meta, probes={k: v for part in parts for k, v in part.probes.items()},
                   text_to_image={k: v for part in parts for k, v in part.text_to_image.items()})

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN -> None) of the meta and every run-level table (the per-item tables stay in CSV)."""
        return {
            "meta": clean(self.meta),
            "metrics": {name: {"unit": info.unit, "kind": info.kind, "worse_when": info.worse_when} for name, info in METRICS.items()},
            **{name: records(getattr(self, name)) for name in JSON_TABLES},
        }

    def _repr_html_(self) -> str:
        s = self.summary
        head = (
            f"<b>RunAnalysis</b>: {len(self.meta.get('stages', []))} stages, probes {escape(', '.join(self.meta.get('probes', [])))}, "
            f"backend {escape(str(self.meta.get('backend')))}, k={self.meta.get('k')}, fast={self.meta.get('fast')}<br>"
        )
        if s.empty:
            return head
        pivot = s.pivot_table(index=["probe", "modality", "metric"], columns=["stage_a", "stage_b"], values="value", aggfunc="first")
        return head + pivot.to_html(float_format=lambda v: f"{v:.4g}", escape=True)


# --- engine -------------------------------------------------------------------------------------------


@dataclass
class _StageData:
    """What one stage contributes to every pair: kNN lists, retrieval ranks, paired angles, centroids."""

    knn: dict = field(default_factory=dict)  # modality -> [q, k] neighbour rows of the query items
    ranks: RetrievalRanks | None = None
    scores: dict | None = None
    paired: np.ndarray | None = None
    gap: float = float("nan")
    gram: dict = field(default_factory=dict)  # modality -> Procrustes Gram matrix of this stage
    score_ci: dict | None = None  # fast mode: "i2t_R@1" -> (low, high) 95% interval of the sampled recall
    cross_queries: np.ndarray | None = None  # unit image rows queried by the cross-stage retrieval
    trajectory: dict = field(default_factory=dict)  # modality -> unit rows of the few items followed across stages


@dataclass(frozen=True)
class CrossStageCell:
    """Image-to-text R@1 (percent) with images embedded at one stage and captions at another, and its 95% interval."""

    value: float
    ci_low: float
    ci_high: float
    queries: int


class PairContext:
    """What a family's ``pair`` computation sees for one stage pair of one probe set.

    Attributes: ``a``, ``b`` (stage names), ``probe``, ``modalities`` (those the probe has), ``cross`` (both
    present), ``text_to_image``, ``sa``/``sb`` (the stages' cached kNN lists, retrieval ranks and scores, paired
    angles, modality gaps), ``engine`` (topology, KL and cross-stage caches), ``spectra`` (angle-spectrum frames).
    Values go out through ``put`` (summary) and ``item`` (per-item columns); ``rotation`` is shared by families.
    """

    def __init__(self, engine: _Engine, a: str, b: str, probe: str, out: dict):
        self.engine, self.a, self.b, self.probe = engine, a, b, probe
        self.sa, self.sb = engine.stage(a, probe), engine.stage(b, probe)
        self.modalities = tuple(engine.probes[probe])
        self.cross = len(self.modalities) == 2
        self.text_to_image = engine.t2i[probe]
        self.spectra = out["spectra"]
        self.columns: dict = {}  # modality -> {column: per-item values}
        self._summary = out["summary"]
        self._rotation: dict = {}
        for m in self.modalities:
            check_pair(self.unit(a, m), self.unit(b, m), f"probe {probe!r}, {m}")

    def unit(self, stage: str, modality: str) -> np.ndarray:
        return self.engine.unit(stage, self.probe, modality)

    def put(self, modality: str, metric: str, value) -> None:
        """One summary value; the metric must be registered (a typo fails here, not in the report)."""
        if metric not in METRICS:
            raise KeyError(f"metric {metric!r} is not registered (metrics/registry.py)")
        self._summary.append((self.a, self.b, self.probe, modality, metric, float(value)))

    def item(self, modality: str, column: str, values) -> None:
        """A per-item column (one value per image, or per caption for "text" and "cross"); the column must be declared
        by a family (``Family.items``), as a metric must be registered."""
        if column not in ITEM_COLUMNS:
            raise KeyError(f"per-item column {column!r} is not declared by any family (Family.items, metrics/registry.py)")
        self.columns.setdefault(modality, {})[column] = np.asarray(values)

    def spectrum(self, kind: str, centred: bool, angles, shares, dim: int, held: float) -> None:
        """One rotation spectrum (rows of ``RunAnalysis.spectra``): plane angles with their variance shares and the fit's subspace."""
        self.spectra.append(_spectrum_frame(self.a, self.b, self.probe, kind, centred, angles, shares, dim, held))

    def size(self, modality: str) -> int:
        return self.engine.sizes[(self.probe, modality)]

    def query_rows(self, modality: str):
        """The sampled query rows of the kNN metrics (``None``: every row)."""
        return self.engine.rows[(self.probe, modality)]

    def overlap(self, modality: str) -> np.ndarray:
        return overlap_from_indices(self.sa.knn[modality], self.sb.knn[modality])

    def rotation(self, modality: str) -> np.ndarray:
        """Per-item rotation angles (degrees) from stage a to b, computed once per pair."""
        if modality not in self._rotation:
            self._rotation[modality] = rotation_angles(self.unit(self.a, modality), self.unit(self.b, modality), normalized=True)
        return self._rotation[modality]


class _Engine:
    def __init__(self, getter: Callable, stages, probes: dict, t2i: dict, *, k, fast, backend, seed, temperature,
                 fast_queries, fast_rows, topology_max_items, cache_stages=3, progress=False, id_tables=None,
                 rotation_floor=DEFAULT_FLOOR, cross_stage_queries=None):
        self.get = getter
        self.stages, self.probes, self.t2i = list(stages), probes, t2i
        self.k, self.fast, self.seed, self.temperature = k, fast, seed, temperature
        self.backend: Backend = get_backend(backend)
        self.fast_queries, self.fast_rows = fast_queries, fast_rows
        # fast mode: topology from every pair among at most fast_queries seeded items (a quarter of the pairs at 2000)
        self.topology_max_items = min(topology_max_items, fast_queries) if fast else topology_max_items
        self.rotation_floor = rotation_floor
        self.progress = progress
        self.id_tables = id_tables or {}
        self._arrays: OrderedDict = OrderedDict()
        self.pinned: set = set()  # stages kept in the cache (the reference stage)
        self.cache_stages = cache_stages
        self.stage_data: dict = {}
        self.rows: dict = {}  # (probe, modality) -> query rows for kNN (all rows unless fast)
        self.sizes: dict = {}
        self.fit_rows: dict = {}  # (probe, modality) -> rows used for Procrustes in fast mode
        self.cross_stage_queries = cross_stage_queries or (FAST_CROSS_STAGE_QUERIES if fast else CROSS_STAGE_QUERIES)
        self.cross_rows: dict = {}  # probe -> image rows queried by the cross-stage retrieval (None: all)
        self.trajectory_rows: dict = {}  # (probe, modality) -> rows of the items followed across stages
        self._cross: dict = {}  # (image stage, text stage, probe) -> CrossStageCell
        self.timing: dict = {"knn_s": 0.0, "retrieval_s": 0.0, "pairs_s": 0.0, "normalise_s": 0.0, "cross_stage_s": 0.0}
        self._topology: dict = {}  # (stage, probe, modality) -> pair angles of the topology items
        self._kl: OrderedDict = OrderedDict()  # (stage, probe) -> log-probability rows for the KL
        self.symmetric_min_rows = SYMMETRIC_MIN_ROWS
        # pairs may be analysed by several threads at once (``_analyse_pairs``): each cache entry is computed once, under
        # its own lock, and the caches' bookkeeping (insertion, eviction, timing sums) happens under ``_guard``
        self._guard = threading.RLock()
        self._key_locks: dict = {}
        self.pair_threads = 1  # jobs side by side, and the BLAS/OpenMP threads each gets (set by analyze_run)
        self.threads_each = 0
        if not temperature > 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        self._check_shapes()

    # inputs ------------------------------------------------------------------------------------------
    def _check_shapes(self):
        for probe, mods in self.probes.items():
            for m in mods:
                shapes = {s: tuple(self.get(s, probe, m).shape) for s in self.stages}
                first = self.stages[0]
                for s, shp in shapes.items():
                    if len(shp) != 2:
                        raise InputError(f"stage {s!r}, probe {probe!r}, {m}: expected an [n, d] array, got shape {shp}")
                    if shp[0] != shapes[first][0]:
                        raise InputError(f"probe {probe!r}, {m}: stage {first!r} has {shapes[first][0]} items but stage {s!r} has {shp[0]}")
                    if shp[1] != shapes[first][1]:
                        raise InputError(f"probe {probe!r}, {m}: stage {first!r} has dimension {shapes[first][1]} but stage {s!r} has {shp[1]}")
                n = shapes[first][0]
                check_k(self.k, n, True, f"probe {probe!r}, {m}")
                self.sizes[(probe, m)] = n
                if self.fast and n > self.fast_rows:
                    rng = np.random.default_rng([self.seed, n, 3 if m == "image" else 4])
                    self.fit_rows[(probe, m)] = np.sort(rng.choice(n, size=self.fast_rows, replace=False))
                if self.fast and n > self.fast_queries:
                    rng = np.random.default_rng([self.seed, n, 1 if m == "image" else 2])
                    self.rows[(probe, m)] = np.sort(rng.choice(n, size=self.fast_queries, replace=False))
                else:
                    self.rows[(probe, m)] = None
            if len(mods) == 2:
                dims = {m: self.get(self.stages[0], probe, m).shape[1] for m in mods}
                if dims["image"] != dims["text"]:
                    raise InputError(f"probe {probe!r}: image dimension {dims['image']} differs from text dimension {dims['text']}")
                n_img = self.sizes[(probe, "image")]
                rng = np.random.default_rng([self.seed, n_img, 5])
                q = self.cross_stage_queries
                # fast mode draws them from its sampled query images: a diagonal cell is then the stage's own retrieval
                sampled = self.rows[(probe, "image")]
                drawn_from = sampled if sampled is not None and len(sampled) >= q else n_img
                self.cross_rows[probe] = None if n_img <= q else np.sort(rng.choice(drawn_from, size=q, replace=False))
                self.trajectory_rows.update(zip(((probe, "image"), (probe, "text")), trajectory_rows(self.t2i[probe], n_img)))
            else:
                for m in mods:
                    n = self.sizes[(probe, m)]
                    self.trajectory_rows[(probe, m)] = np.unique(np.linspace(0, n - 1, min(N_TRAJECTORY_ITEMS, n)).round().astype(int))

    def _once(self, cache: dict, key, compute: Callable):
        """``cache[key]``, computed by ``compute()`` the first time: once, even when several pair threads ask at once."""
        try:
            return cache[key]
        except KeyError:
            pass
        with self._guard:
            lock = self._key_locks.setdefault((id(cache), key), threading.Lock())
        with lock:
            if key not in cache:
                value = compute()
                with self._guard:
                    cache[key] = value
            return cache[key]

    def add_time(self, key: str, seconds: float) -> None:
        """Add wall seconds to ``timing[key]`` (pair threads add to the same keys)."""
        with self._guard:
            self.timing[key] = self.timing.get(key, 0.0) + seconds

    def _cached_bytes(self) -> int:
        return sum(x.nbytes for arrays in self._arrays.values() for x in arrays.values())

    def unit(self, stage, probe, modality) -> np.ndarray:
        key = (stage, probe)

        def normalise():
            t = time.perf_counter()
            arrays = {m: as_unit_rows(self.get(stage, probe, m), f"stage {stage!r}, probe {probe!r}, {m}") for m in self.probes[probe]}
            self.add_time("normalise_s", time.perf_counter() - t)
            return arrays

        arrays = self._once(self._arrays, key, normalise)
        with self._guard:
            if key in self._arrays:
                self._arrays.move_to_end(key)
            evictable = [k for k in self._arrays if k[0] not in self.pinned and k != key]
            while len(self._arrays) > self.cache_stages and evictable and self._cached_bytes() > CACHE_BYTES:
                del self._arrays[evictable.pop(0)]
        return arrays[modality]

    # per stage ---------------------------------------------------------------------------------------
    def stage(self, stage, probe) -> _StageData:
        return self._once(self.stage_data, (stage, probe), lambda: self._stage(stage, probe))

    def _stage(self, stage, probe) -> _StageData:
        sd = _StageData()
        mods = self.probes[probe]
        for m in mods:
            x = self.unit(stage, probe, m)
            rows = self.rows[(probe, m)]
            t = time.perf_counter()
            min_rows = self.symmetric_min_rows
            if rows is None and self.backend.exact and min_rows is not None and x.shape[0] >= min_rows:  # half the products
                _, sd.knn[m] = self.backend.self_topk(x, self.k)
            else:
                _, sd.knn[m] = self.backend.topk(x if rows is None else x[rows], x, self.k, exclude_self=True, query_rows=rows,
                                                 normalized=True)
            self.add_time("knn_s", time.perf_counter() - t)
        if len(mods) == 2:
            img, txt, t2i = self.unit(stage, probe, "image"), self.unit(stage, probe, "text"), self.t2i[probe]
            t = time.perf_counter()
            ri, rt = self.rows[(probe, "image")], self.rows[(probe, "text")]
            if ri is None and rt is None:
                sd.ranks = retrieval_ranks(img, txt, t2i, backend=self.backend, normalized=True)
            else:
                ri = np.arange(img.shape[0]) if ri is None else ri
                rt = np.arange(txt.shape[0]) if rt is None else rt
                sd.ranks = sampled_ranks(img, txt, t2i, ri, rt, backend=self.backend)
            sd.scores = scores_from_ranks(sd.ranks)
            if ri is not None or rt is not None:
                sd.score_ci = _recall_ci(sd.ranks, {"i2t": img.shape[0], "t2i": txt.shape[0]})
            self.add_time("retrieval_s", time.perf_counter() - t)
            sd.paired = paired_angles(img, txt, t2i, normalized=True)
            sd.gap = float(np.linalg.norm(centroid(img) - centroid(txt)))
            rows = self.cross_rows[probe]
            sd.cross_queries = img if rows is None else img[rows]
        for m in mods:
            sd.trajectory[m] = self.unit(stage, probe, m)[self.trajectory_rows[(probe, m)]].copy()
        return sd

    def topology(self, a, b, probe, m):
        """Topology change of one pair from the per-stage pair angles of the (sampled) topology items."""
        n = self.sizes[(probe, m)]
        items = topology_items(n, self.topology_max_items, self.seed)
        for s in (a, b):
            self._once(self._topology, (s, probe, m), lambda s=s: pair_angles(self.unit(s, probe, m) if items is None
                                                                             else self.unit(s, probe, m)[items]))
        return topology_from_angles(self._topology[(a, probe, m)], self._topology[(b, probe, m)], n, items)

    def cross_stage_r1(self, image_stage, text_stage, probe) -> CrossStageCell:
        """Image-to-text R@1 with images embedded at ``image_stage`` queried against captions at ``text_stage``.

        The same ``cross_stage_queries`` seeded image rows at every stage (all rows when there are fewer), the whole
        caption gallery; a 95% interval when rows are sampled. Cells are cached for the pair metrics and the matrix.
        """
        return self._once(self._cross, (image_stage, text_stage, probe), lambda: self._cross_stage_r1(image_stage, text_stage, probe))

    def _cross_stage_r1(self, image_stage, text_stage, probe) -> CrossStageCell:
        t = time.perf_counter()
        rows, n_img = self.cross_rows[probe], self.sizes[(probe, "image")]
        t2i = self.t2i[probe]
        if rows is not None:
            remap = np.full(n_img, -1, dtype=np.int64)
            remap[rows] = np.arange(len(rows))
            t2i = remap[t2i]  # captions of images not queried stay in the gallery and belong to no query
        sd = self.stage(image_stage, probe)
        full = sd.ranks.i2t if sd.ranks is not None else None
        if image_stage == text_stage and full is not None and np.all(np.isfinite(full if rows is None else full[rows])):
            ranks = full if rows is None else full[rows]  # a diagonal cell is the stage's own image-to-text retrieval
        else:
            queries = sd.cross_queries
            ranks = sampled_ranks(queries, self.unit(text_stage, probe, "text"), t2i, np.arange(len(queries)), np.array([], dtype=np.int64),
                                  backend=self.backend).i2t
        p = float(np.mean(ranks == 1))
        lo, hi = proportion_ci(p, len(ranks), n_img)
        self.add_time("cross_stage_s", time.perf_counter() - t)
        return CrossStageCell(100.0 * p, 100.0 * lo, 100.0 * hi, len(ranks))

    def kl(self, a, b, probe) -> ContrastiveKL:
        """Contrastive KL of one pair from per-stage log-probability rows (a few stages cached)."""
        n_img, n_txt = self.sizes[(probe, "image")], self.sizes[(probe, "text")]
        ri, rt = kl_rows(n_img, n_txt, KL_EXACT_MAX, 64 if self.fast else KL_SAMPLE_ROWS, self.seed)
        rows = []
        for s in (a, b):
            rows.append(self._once(self._kl, (s, probe), lambda s=s: contrastive_log_probs(
                self.unit(s, probe, "image"), self.unit(s, probe, "text"), ri, rt, self.temperature, self.backend)))
            with self._guard:
                evictable = [k for k in self._kl if k[0] not in self.pinned and k[0] not in (a, b)]
                while len(self._kl) > self.cache_stages and evictable:
                    del self._kl[evictable.pop(0)]
        (ia, ta), (ib, tb) = rows
        i2t, t2i = float(kl_from_log_probs(ia, ib).mean()), float(kl_from_log_probs(ta, tb).mean())
        return ContrastiveKL(i2t, t2i, (i2t + t2i) / 2.0, len(ri), len(rt), float(self.temperature))

    # per pair ----------------------------------------------------------------------------------------
    def pair(self, a, b, probe, out):
        """Every registered metric family on one stage pair of one probe set (rows appended to ``out``)."""
        t0 = time.perf_counter()
        ctx = PairContext(self, a, b, probe, out)
        for family in FAMILIES.values():
            if family.pair is not None:
                t = time.perf_counter()
                family.pair(ctx)
                # per family, including the per-stage caches it fills first (Gram matrices, topology angles, cross-stage cells)
                self.add_time(f"family_{family.name}_s", time.perf_counter() - t)
        for modality, cols in ctx.columns.items():
            out["items"].append(self._item_frame(a, b, probe, modality, cols))
        self.add_time("pairs_s", time.perf_counter() - t0)

    def stage_gram(self, stage, probe, modality) -> Gram:
        """Gram matrix of one stage's (fit rows of) unit embeddings, computed once per stage."""
        return self._once(self.stage(stage, probe).gram, modality, lambda: gram(self.fit_unit(stage, probe, modality)))

    def fit_unit(self, stage, probe, modality) -> np.ndarray:
        """The unit rows the Procrustes fits use: every row, or fast mode's seeded fit rows (copied once while the stage
        is cached, not once per pair)."""
        x = self.unit(stage, probe, modality)
        rows = self.fit_rows.get((probe, modality))
        if rows is None:
            return x
        cached = self._arrays.get((stage, probe))
        if cached is None:  # evicted meanwhile by another pair thread: a copy for this use only
            return x[rows]
        return self._once(cached, ("fit", modality), lambda: x[rows])

    def _item_frame(self, a, b, probe, modality, cols) -> pd.DataFrame:
        n = len(next(iter(cols.values())))
        ids = self.ids(probe, "image" if modality == "image" else "text", n)
        frame = pd.DataFrame({"stage_a": a, "stage_b": b, "probe": probe, "modality": modality, "row": np.arange(n), "id": ids})
        for key, v in cols.items():
            frame[key] = v
        return frame

    def ids(self, probe, modality, n):
        ps = self.id_tables.get(probe)
        if ps is None:
            return np.arange(n).astype(str)
        return ps.table(modality)["id"].astype(str).to_numpy()


def proportion_ci(p: float, n: int, big_n: int, level: float = 0.95) -> tuple[float, float]:
    """Interval of a population share from a proportion ``p`` seen on ``n`` seeded items of ``big_n`` (drawn without
    replacement): the exact interval of the hypergeometric distribution, every population count K whose probability of
    a result at least as extreme as the one seen is above (1 - level) / 2 on its side. It covers the share at least
    ``level`` of the time, stays inside [0, 1], keeps a width when every sampled item hit or missed (200 sampled queries
    that all hit are no proof that every query would) and has none when every item was seen."""
    if not n or not np.isfinite(p):
        return float("nan"), float("nan")
    if n >= big_n:
        return p, p
    hits = int(round(p * n))
    alpha = (1.0 - level) / 2.0
    log_fact = _log_factorials(big_n)

    def pmf(k: int) -> np.ndarray:  # P(X = i | K = k) for i = 0..n (zero where impossible)
        i = np.arange(n + 1)
        ok = (i <= k) & (n - i <= big_n - k)
        i = i[ok]
        out = np.zeros(n + 1)
        out[ok] = np.exp(log_fact[k] - log_fact[i] - log_fact[k - i] + log_fact[big_n - k] - log_fact[n - i]
                         - log_fact[big_n - k - n + i] - log_fact[big_n] + log_fact[n] + log_fact[big_n - n])
        return out

    def first(lo: int, hi: int, holds) -> int:  # the smallest k in [lo, hi] where the monotone ``holds`` is true
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if holds(mid) else (mid + 1, hi)
        return lo

    k_min, k_max = hits, big_n - (n - hits)  # the population holds at least the hits seen and the misses seen
    low = first(k_min, k_max, lambda k: pmf(k)[hits:].sum() > alpha)  # P(X >= hits) grows with K
    # P(X <= hits) falls with K: the last K where it is above alpha (k_max + 1 stands for "none beyond")
    high = first(k_min, k_max + 1, lambda k: k > k_max or pmf(k)[: hits + 1].sum() <= alpha) - 1
    return low / big_n, max(low, high) / big_n


@functools.lru_cache(maxsize=8)
def _log_factorials(n: int) -> np.ndarray:
    """log(i!) for i = 0..n."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def _score_interval(sd: _StageData, key: str, value: float) -> tuple[float, float]:
    """The 95% interval of one retrieval score: sampled R@K (fast mode) from its queries, an exact R@K the value itself
    (no sampling error), NaN for the scores without one (median and mean rank, rsum)."""
    if "_R@" not in key:
        return float("nan"), float("nan")
    return sd.score_ci[key] if sd.score_ci is not None else (value, value)  # score_ci is set exactly when queries were sampled


def _recall_ci(ranks: RetrievalRanks, population: dict) -> dict:
    """95% intervals (percent) for R@K of sampled queries."""
    out = {}
    for direction, r in (("i2t", ranks.i2t), ("t2i", ranks.t2i)):
        r = np.asarray(r, dtype=np.float64)
        r = r[np.isfinite(r)]
        for k in DEFAULT_KS:
            lo, hi = proportion_ci(float(np.mean(r <= k)) if len(r) else float("nan"), len(r), population[direction])
            out[f"{direction}_R@{k}"] = (100.0 * lo, 100.0 * hi)
    return out


def trajectory_rows(text_to_image: np.ndarray, n_images: int, n_items: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A few evenly spaced images and the first caption of each: the items the report follows across stages."""
    n_items = N_TRAJECTORY_ITEMS if n_items is None else n_items
    rows = np.unique(np.linspace(0, n_images - 1, min(n_items, n_images)).round().astype(int))
    first: dict = {}
    for j, i in enumerate(np.asarray(text_to_image)):
        first.setdefault(int(i), j)
    keep = np.array([r for r in rows if int(r) in first], dtype=int)
    return keep, np.array([first[int(r)] for r in keep], dtype=int)


def trajectory_frame(paths: dict, stages: list[str], probe: str, labels: dict) -> pd.DataFrame:
    """Displacements of the followed items from their first-stage position, on the two principal directions.

    ``paths[modality]`` is [stages, items, d] (unit rows). Items sit far apart compared with how far they move, so
    each path starts at the origin; ``explained_pct`` is the share of all displacement the two directions show and
    ``step_deg`` the angle an item moved since the previous stage.
    """
    frames = []
    for m, stack in paths.items():
        stack = np.asarray(stack, dtype=np.float64)
        if stack.shape[0] < 2 or stack.shape[1] == 0:
            continue
        disp = stack - stack[0]
        _, sv, vt = np.linalg.svd(disp[1:].reshape(-1, disp.shape[-1]), full_matrices=False)
        vt = np.vstack([vt[:2], np.zeros((max(0, 2 - len(vt)), vt.shape[1]))])
        coords = disp @ vt[:2].T
        explained = float((sv[:2] ** 2).sum() / max((sv**2).sum(), 1e-12) * 100)
        steps = np.vstack([np.full((1, stack.shape[1]), np.nan), np.linalg.norm(np.diff(stack, axis=0), axis=-1)])
        step_deg = np.degrees(2 * np.arcsin(np.clip(steps / 2, 0, 1)))
        for si, stage in enumerate(stages):
            frames.append(pd.DataFrame({"probe": probe, "modality": m, "item": np.arange(stack.shape[1]), "label": labels[m],
                                        "stage": stage, "x": coords[si, :, 0], "y": coords[si, :, 1], "step_deg": step_deg[si],
                                        "explained_pct": explained}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRAJECTORY_COLUMNS)


def _spectrum_frame(a, b, probe, kind, centred, angles, shares, dim, held) -> pd.DataFrame:
    """One row per rotation plane: its angle, the share of the two stages' variance it carries, and the fit's subspace."""
    return pd.DataFrame({"stage_a": a, "stage_b": b, "probe": probe, "kind": kind, "centred": centred,
                         "index": np.arange(len(angles)), "angle_deg": angles, "variance_share": shares, "dim": dim,
                         "variance_held": held})


def default_pairs(stages: list[str], ref: int | str = 0, consecutive: bool = True) -> list[tuple[str, str]]:
    """Every stage against ``ref`` plus (optionally) consecutive stages, without repeats or self-pairs."""
    ref_name = stages[ref] if isinstance(ref, (int, np.integer)) else ref
    if ref_name not in stages:
        raise InputError(f"reference stage {ref!r} is not one of {stages}")
    pairs = [(ref_name, s) for s in stages if s != ref_name]
    if consecutive:
        pairs += [(stages[i], stages[i + 1]) for i in range(len(stages) - 1)]
    seen, out = set(), []
    for p in pairs:
        if p not in seen and p[0] != p[1]:
            seen.add(p)
            out.append(p)
    order = {s: i for i, s in enumerate(stages)}
    return sorted(out, key=lambda p: (max(order[p[0]], order[p[1]]), min(order[p[0]], order[p[1]])))


def _run_engine(engine: _Engine, pairs, stages, progress=False, learned_at=None, ref=None) -> tuple:
    out = {"summary": [], "items": [], "spectra": []}
    retrieval, paired = [], []
    tables: dict = {}
    probes = list(engine.probes)
    for probe in probes:
        # the cross-stage cells no pair needs and the run-level tables (the bridge's learning curve: the reference and
        # last stages of every set) are computed beside the pairs when pairs run in threads, after them otherwise
        # (the learning curve, the longest single job, before the pairs; the short cells after, filling the threads' ends)
        curve = [lambda: tables.update(_run_tables(engine, ref, stages[-1] if stages else ref))] if probe == probes[-1] else []
        cells = [functools.partial(engine.cross_stage_r1, img, txt, probe) for txt, img in _cross_stage_cells(engine, probe, stages)]
        _analyse_pairs(engine, pairs, probe, out, progress, before=curve, after=cells)
        for s in stages:
            sd = engine.stage(s, probe)
            if sd.scores is not None:
                for key, value in sd.scores.items():
                    direction, metric = ("both", "rsum") if key == "rsum" else key.split("_", 1)
                    lo, hi = _score_interval(sd, key, value)
                    retrieval.append((s, probe, direction, metric, value, lo, hi))
                paired.append(pd.DataFrame({"stage": s, "probe": probe, "row": np.arange(len(sd.paired)),
                                            "id": engine.ids(probe, "text", len(sd.paired)), "paired_angle_deg": sd.paired}))
    summary = pd.DataFrame(out["summary"], columns=SUMMARY_COLUMNS)
    items = pd.concat(out["items"], ignore_index=True) if out["items"] else pd.DataFrame(columns=SUMMARY_COLUMNS[:4] + ["row", "id"])
    spectra = pd.concat(out["spectra"], ignore_index=True) if out["spectra"] else pd.DataFrame(
        columns=SPECTRUM_COLUMNS)
    retrieval_df = pd.DataFrame(retrieval, columns=RETRIEVAL_COLUMNS)
    paired_df = pd.concat(paired, ignore_index=True) if paired else pd.DataFrame(columns=["stage", "probe", "row", "id", "paired_angle_deg"])
    continual = continual_from_retrieval(retrieval_df, list(stages), learned_at)
    return dict(summary=summary, items=items, retrieval=retrieval_df, spectra=spectra, paired=paired_df, continual=continual,
                cross_stage=_cross_stage_frame(engine, stages), trajectories=_trajectories(engine, stages), **tables)


def pair_threads(values: int, n_pairs: int, fast: bool = False) -> int:
    """How many stage pairs of a probe set holding ``values`` values are analysed at once: ``PAIR_THREADS`` for a set
    larger than ``SMALL_SET_VALUES`` (one is analysed on one thread anyway), and in exact mode at most
    ``SIDE_BY_SIDE_MAX_VALUES``, with at least two pairs and two cores."""
    if values <= SMALL_SET_VALUES or n_pairs < 2 or (not fast and values > SIDE_BY_SIDE_MAX_VALUES):
        return 1
    return max(1, min(PAIR_THREADS, n_pairs, _cores()))


def _analyse_pairs(engine: _Engine, pairs, probe, out, progress=False, before=(), after=()) -> None:
    """Every pair of one probe set, rows appended to ``out`` in pair order, and the calls in ``before`` and ``after``.

    With ``engine.pair_threads`` > 1 the stages (kNN searches, retrieval ranks), ``before``, the pairs and ``after`` run in that
    many threads, each with its share of the cores for BLAS and OpenMP (faiss). Much of the work (d x d eigenproblems,
    counting passes, small products, the families' numpy steps) keeps one core busy whatever the thread count, so two
    jobs side by side on one thread each use two cores where one job on two threads used about one and a half. Each
    stage's kNN lists, ranks and caches are still computed once (``_Engine._once``), and the rows are the same (kNN lists
    from the symmetric search up to the order of near-ties)."""
    workers = engine.pair_threads

    def job(i, part):
        def work():
            a, b = pairs[i]
            if progress:
                print(f"[{probe}] pair {i + 1}/{len(pairs)}: {a} -> {b}", flush=True)
            engine.pair(a, b, probe, part)
        return work

    if workers < 2:
        for i in range(len(pairs)):
            job(i, out)()
        for work in (*before, *after):
            work()
        return
    per = engine.threads_each
    parts = [{key: [] for key in out} for _ in pairs]

    def run(work):
        # OpenMP's thread count is per thread: each pair thread sets its own (faiss searches run in them)
        with threadpool_limits(limits=per, user_api="openmp"), (small_linalg() if per == 1 else contextlib.nullcontext()):
            work()

    stages = [functools.partial(engine.stage, s, probe) for s in dict.fromkeys(s for pair in pairs for s in pair)]
    t = time.perf_counter()
    with threadpool_limits(limits=per, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        # stages first: a pair waiting for a stage another thread is computing would leave its core idle
        futures = [pool.submit(run, w) for w in [*stages, *before, *[job(i, parts[i]) for i in range(len(pairs))], *after]]
        try:
            for f in futures:
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    engine.add_time("side_by_side_s", time.perf_counter() - t)
    for part in parts:
        for key, rows in part.items():
            out[key].extend(rows)


def _run_tables(engine: _Engine, ref, last) -> dict:
    """The families' run-level tables (``Family.run``) for the reference stage against the last one."""
    out: dict = {}
    if ref is None:
        return out
    for family in FAMILIES.values():
        if family.run is not None:
            out.update(family.run(engine, ref, last))
    return out


def _cross_stage_cells(engine: _Engine, probe, stages) -> list[tuple[str, str]]:
    """The (text stage, image stage) cells of a probe set's cross-stage matrix, text stage outermost (each caption
    gallery is normalised once); none without both modalities or with more than ``CROSS_STAGE_MAX_STAGES`` stages."""
    if not 1 < len(stages) <= CROSS_STAGE_MAX_STAGES or len(engine.probes[probe]) != 2:
        return []
    return [(txt, img) for txt in stages for img in stages]


def _cross_stage_frame(engine: _Engine, stages) -> pd.DataFrame:
    """Cross-stage image-to-text R@1 of every (image stage, text stage) cell, per probe set with both modalities."""
    rows = []
    for probe in engine.probes:
        for txt, img in _cross_stage_cells(engine, probe, stages):
            c = engine.cross_stage_r1(img, txt, probe)
            rows.append((probe, img, txt, c.value, c.ci_low, c.ci_high, c.queries))
    return pd.DataFrame(rows, columns=CROSS_STAGE_COLUMNS)


def _trajectories(engine: _Engine, stages) -> pd.DataFrame:
    """The followed items of every probe set and modality, as displacement paths (see ``trajectory_frame``)."""
    frames = []
    for probe, mods in engine.probes.items():
        paths = {m: np.stack([engine.stage(s, probe).trajectory[m] for s in stages]) for m in mods}
        labels = {m: [str(x)[:18] for x in engine.ids(probe, m, engine.sizes[(probe, m)])[engine.trajectory_rows[(probe, m)]]]
                  for m in mods}
        labels = {m: labels["image" if "image" in mods else m] for m in mods}  # a caption is labelled by its image
        frames.append(trajectory_frame(paths, list(stages), probe, labels))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRAJECTORY_COLUMNS)


def _meta(engine: _Engine, stages, pairs, extra) -> dict:
    return {
        "backend": engine.backend.name,
        "backend_exact": engine.backend.exact,
        "k": engine.k,
        "fast": engine.fast,
        "fast_queries": engine.fast_queries if engine.fast else None,
        "knn_queries": {f"{p}/{m}": (engine.sizes[(p, m)] if r is None else len(r)) for (p, m), r in engine.rows.items()},
        "topology_max_items": engine.topology_max_items,
        "rotation_floor": engine.rotation_floor,
        "procrustes_rows": {f"{p}/{m}": (engine.sizes[(p, m)] if (p, m) not in engine.fit_rows else len(engine.fit_rows[(p, m)]))
                            for (p, m) in engine.sizes},
        "temperature": engine.temperature,
        "tie_rule": "pessimistic: a wrong item with cosine >= the correct one (within 1e-5) ranks ahead",
        "seed": engine.seed,
        "stages": list(stages),
        "pairs": [list(p) for p in pairs],
        "probes": list(engine.probes),
        "timing_s": {k: round(v, 3) for k, v in engine.timing.items()},
        "retrieval_ci95": {f"{s}/{p}/{key}": [round(float(lo), 4), round(float(hi), 4)] for (s, p), sd in engine.stage_data.items()
                           if sd.score_ci for key, (lo, hi) in sd.score_ci.items()},
        **extra,
    }


def probe_values(run, probe: str) -> int:
    """The values (items x d, the larger modality) one probe set of a run holds: compared with ``SMALL_SET_VALUES``."""
    info = run.probes[probe]
    return max(info.n_images, info.n_texts) * run.dimension


def _threads_for(values: int):
    """One BLAS/OpenMP thread for an analysis whose largest probe set holds at most ``SMALL_SET_VALUES`` values."""
    return threadpool_limits(limits=1) if values <= SMALL_SET_VALUES else contextlib.nullcontext()


def analyze_run(
    run,
    *,
    ref: int | str = 0,
    consecutive: bool = True,
    pairs=None,
    probes=None,
    k: int = 10,
    fast: bool = False,
    backend: str | Backend = "auto",
    seed: int = 0,
    progress: bool = False,
    temperature: float = DEFAULT_TEMPERATURE,
    learned_at: dict | None = None,
    fast_queries: int = FAST_QUERIES,
    fast_rows: int = FAST_ROWS,
    topology_max_items: int = EXACT_TOPOLOGY_MAX,
    rotation_floor: float = DEFAULT_FLOOR,
) -> RunAnalysis:
    """Analyse a run opened with ``open_run``: every metric for every stage pair and probe set.

    ``pairs`` overrides the default stage pairs (every stage against ``ref`` plus consecutive stages).
    ``fast`` samples ``fast_queries`` query items per probe and modality (same rows at every stage) for
    the kNN and retrieval metrics and reports a 95% CI for the neighbour overlap; Procrustes fits use
    ``fast_rows`` seeded rows. Topology change uses all pairs among at most ``topology_max_items`` items (in fast mode at
    most ``fast_queries``); cross-stage cells and KL rows are sampled in both modes, fewer in fast mode. ``learned_at`` maps a
    probe to the stage (name or index) that trains its task, for backward transfer and Transfer; by
    default it is read from ``run.metadata["learned_at"]`` when present, else every probe is held out.
    """
    stages = list(run.stages)
    if not stages:
        raise InputError(f"{run.path}: the run has no stages")
    names = list(run.probes) if probes is None else list(probes)
    unknown = [p for p in names if p not in run.probes]
    if unknown:
        raise InputError(f"{run.path}: unknown probe set(s) {unknown}; the run has {list(run.probes)}")
    try:
        ref_name = run.stage_name(ref)
        if pairs is None:
            pairs = default_pairs(stages, ref_name, consecutive)
        else:
            pairs = [(run.stage_name(a), run.stage_name(b)) for a, b in pairs]
        learned = learned_at if learned_at is not None else run.metadata.get("learned_at")
        learned = {p: run.stage_index(v) for p, v in (learned or {}).items() if p in names}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{run.path}: {exc.args[0] if exc.args else exc}") from None
    used = [s for s in stages if any(s in p for p in pairs)] or stages[:1]
    mods = {p: MODALITIES for p in names}
    t2i = {p: run.probes[p].text_to_image for p in names}
    engine = _Engine(run.embeddings, used, mods, t2i, k=k, fast=fast, backend=backend, seed=seed, temperature=temperature,
                     fast_queries=fast_queries, fast_rows=fast_rows, topology_max_items=topology_max_items, progress=progress, rotation_floor=rotation_floor,
                     id_tables={p: run.probes[p] for p in names})
    engine.pinned = {ref_name} if any(ref_name in p for p in pairs) else set()
    values = max(probe_values(run, p) for p in names)
    engine.pair_threads = pair_threads(values, len(pairs), fast)
    engine.threads_each = max(1, _cores() // engine.pair_threads)
    if engine.pair_threads > 1 and engine.threads_each == 1 and engine.symmetric_min_rows is None:
        engine.symmetric_min_rows = SYMMETRIC_ONE_THREAD_MIN_ROWS
    engine.cache_stages += engine.pair_threads - 1  # pairs side by side hold a stage more each
    t = time.perf_counter()
    with _threads_for(values):
        tables = _run_engine(engine, pairs, used, progress, learned, ref=ref_name if ref_name in used else None)
    meta = _meta(engine, used, pairs, {"run": str(run.path), "ref": ref_name, "learned_at": learned,
                                       "total_s": round(time.perf_counter() - t, 3)})
    return RunAnalysis(**tables, meta=meta, probes={p: run.probes[p] for p in names}, text_to_image=t2i)


def analyze_arrays(reference: dict, candidate: dict, text_to_image=None, *, k: int = 10, fast: bool = False,
                   backend: str | Backend = "auto", seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
                   fast_queries: int = FAST_QUERIES, fast_rows: int = FAST_ROWS,
                   topology_max_items: int = EXACT_TOPOLOGY_MAX, rotation_floor: float = DEFAULT_FLOOR) -> RunAnalysis:
    """Compare two embeddings of the same items without a run: ``{"image": [n, d], "text": [m, d]}`` each.

    Either modality may be absent (cross-modal metrics then need both). With both present and no
    ``text_to_image``, caption ``j`` pairs with image ``j`` (counts must match). Stages are named
    ``reference`` and ``candidate``; the probe is named ``arrays``.
    """
    for name, d in (("reference", reference), ("candidate", candidate)):
        if not isinstance(d, dict) or not d or set(d) - set(MODALITIES):
            raise InputError(f"{name} must be a dict with keys 'image' and/or 'text'")
    reference = {m: x if hasattr(x, "shape") else np.asarray(x) for m, x in reference.items()}
    candidate = {m: x if hasattr(x, "shape") else np.asarray(x) for m, x in candidate.items()}
    if set(reference) != set(candidate):
        raise InputError(f"reference has modalities {sorted(reference)} but candidate has {sorted(candidate)}")
    mods = tuple(m for m in MODALITIES if m in reference)
    t2i = None
    if len(mods) == 2:
        n_img, n_txt = reference["image"].shape[0], reference["text"].shape[0]
        if text_to_image is None:
            if n_img != n_txt:
                raise InputError(f"{n_img} images and {n_txt} captions: pass text_to_image to pair them")
            text_to_image = np.arange(n_img)
        t2i = check_text_to_image(text_to_image, n_img, n_txt)
    stages = {"reference": reference, "candidate": candidate}
    engine = _Engine(lambda s, p, m: stages[s][m], list(stages), {"arrays": mods}, {"arrays": t2i}, k=k, fast=fast,
                     backend=backend, seed=seed, temperature=temperature, fast_queries=fast_queries, fast_rows=fast_rows,
                     topology_max_items=topology_max_items, rotation_floor=rotation_floor)
    pairs = [("reference", "candidate")]
    t = time.perf_counter()
    with _threads_for(max(int(np.prod(x.shape)) for x in (*reference.values(), *candidate.values()))):
        tables = _run_engine(engine, pairs, list(stages), ref="reference")
    meta = _meta(engine, list(stages), pairs, {"run": None, "ref": "reference", "total_s": round(time.perf_counter() - t, 3)})
    return RunAnalysis(**tables, meta=meta, text_to_image={} if t2i is None else {"arrays": t2i})
