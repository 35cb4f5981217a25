"""Run-level analysis: every metric family for every probe set, modality and stage pair, as tidy frames.

The expensive step is one kNN search per stage, probe set and modality (and one blocked pass over the
caption x image cosines for retrieval); both are done once per stage and cached, and every pair metric
reuses them. Unit-normalised float32 copies of at most a few stages are held at once.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape

import numpy as np
import pandas as pd

from .errors import InputError
from .knn import Backend, as_unit_rows, check_k, get_backend
from .metrics.continual import continual_from_retrieval
from .metrics.deviation import (
    DEFAULT_TEMPERATURE,
    KL_EXACT_MAX,
    KL_SAMPLE_ROWS,
    ContrastiveKL,
    centroid,
    contrastive_log_probs,
    flips,
    intermodal_rotation,
    kl_from_log_probs,
    kl_rows,
    paired_angles,
)
from .metrics.neighbours import overlap_from_indices, summarise_overlap
from .metrics.procrustes import cross_products, gram, procrustes_from_products
from .metrics.registry import METRICS
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
    distribution,
    pair_angles,
    rotation_angles,
    topology_from_angles,
    topology_items,
)

MODALITIES = ("image", "text")
SUMMARY_COLUMNS = ["stage_a", "stage_b", "probe", "modality", "metric", "value"]
FAST_QUERIES = 1000
FAST_ROWS = 20000
# The symmetric kNN search (half the products, plus transposes and two heap updates per block) is off by
# default: on an idle 2-core machine, 12 searches of 100,000 x 512 took 566 s with it against 490 s with
# faiss query-by-query (experiments/bench_analyze.py). Set an item count to use it from that size on.
SYMMETRIC_MIN_ROWS: int | None = None


@dataclass
class RunAnalysis:
    """Everything measured on a run (or on two bare arrays). All tables are tidy pandas DataFrames."""

    summary: pd.DataFrame
    items: pd.DataFrame
    retrieval: pd.DataFrame
    spectra: pd.DataFrame
    paired: pd.DataFrame
    continual: pd.DataFrame
    meta: dict
    probes: dict = field(default_factory=dict, repr=False)

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

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN -> None) of the meta, summary, retrieval, continual and spectra tables."""
        def records(df):
            return [{k: _jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")]

        return {
            "meta": {k: _jsonable(v) for k, v in self.meta.items()},
            "metrics": {name: {"unit": info.unit, "kind": info.kind, "worse_when": info.worse_when} for name, info in METRICS.items()},
            "summary": records(self.summary),
            "retrieval": records(self.retrieval),
            "continual": records(self.continual),
            "spectra": records(self.spectra),
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


def _jsonable(v):
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


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


class _Engine:
    def __init__(self, getter: Callable, stages, probes: dict, t2i: dict, *, k, fast, backend, seed, temperature,
                 fast_queries, fast_rows, topology_max_items, cache_stages=3, progress=False, id_tables=None):
        self.get = getter
        self.stages, self.probes, self.t2i = list(stages), probes, t2i
        self.k, self.fast, self.seed, self.temperature = k, fast, seed, temperature
        self.backend: Backend = get_backend(backend)
        self.fast_queries, self.fast_rows, self.topology_max_items = fast_queries, fast_rows, topology_max_items
        self.progress = progress
        self.id_tables = id_tables or {}
        self._arrays: OrderedDict = OrderedDict()
        self.pinned: set = set()  # stages kept in the cache (the reference stage)
        self.cache_stages = cache_stages
        self.stage_data: dict = {}
        self.rows: dict = {}  # (probe, modality) -> query rows for kNN (all rows unless fast)
        self.sizes: dict = {}
        self.fit_rows: dict = {}  # (probe, modality) -> rows used for Procrustes in fast mode
        self.timing: dict = {"knn_s": 0.0, "retrieval_s": 0.0, "pairs_s": 0.0, "normalise_s": 0.0}
        self._topology: dict = {}  # (stage, probe, modality) -> pair angles of the topology items
        self._kl: OrderedDict = OrderedDict()  # (stage, probe) -> log-probability rows for the KL
        self.symmetric_min_rows = SYMMETRIC_MIN_ROWS
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

    def unit(self, stage, probe, modality) -> np.ndarray:
        key = (stage, probe)
        if key not in self._arrays:
            t = time.perf_counter()
            self._arrays[key] = {m: as_unit_rows(self.get(stage, probe, m), f"stage {stage!r}, probe {probe!r}, {m}") for m in self.probes[probe]}
            self.timing["normalise_s"] += time.perf_counter() - t
            self._arrays.move_to_end(key)
            evictable = [k for k in self._arrays if k[0] not in self.pinned and k != key]
            while len(self._arrays) > self.cache_stages and evictable:
                del self._arrays[evictable.pop(0)]
        self._arrays.move_to_end(key)
        return self._arrays[key][modality]

    # per stage ---------------------------------------------------------------------------------------
    def stage(self, stage, probe) -> _StageData:
        key = (stage, probe)
        if key in self.stage_data:
            return self.stage_data[key]
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
            self.timing["knn_s"] += time.perf_counter() - t
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
            self.timing["retrieval_s"] += time.perf_counter() - t
            sd.paired = paired_angles(img, txt, t2i, normalized=True)
            sd.gap = float(np.linalg.norm(centroid(img) - centroid(txt)))
        self.stage_data[key] = sd
        return sd

    def topology(self, a, b, probe, m):
        """Topology change of one pair from the per-stage pair angles of the (sampled) topology items."""
        n = self.sizes[(probe, m)]
        items = topology_items(n, self.topology_max_items, self.seed)
        for s in (a, b):
            if (s, probe, m) not in self._topology:
                x = self.unit(s, probe, m)
                self._topology[(s, probe, m)] = pair_angles(x if items is None else x[items])
        return topology_from_angles(self._topology[(a, probe, m)], self._topology[(b, probe, m)], n, items)

    def kl(self, a, b, probe) -> ContrastiveKL:
        """Contrastive KL of one pair from per-stage log-probability rows (a few stages cached)."""
        n_img, n_txt = self.sizes[(probe, "image")], self.sizes[(probe, "text")]
        ri, rt = kl_rows(n_img, n_txt, KL_EXACT_MAX, 64 if self.fast else KL_SAMPLE_ROWS, self.seed)
        for s in (a, b):
            if (s, probe) not in self._kl:
                self._kl[(s, probe)] = contrastive_log_probs(self.unit(s, probe, "image"), self.unit(s, probe, "text"), ri, rt,
                                                             self.temperature, self.backend)
                evictable = [k for k in self._kl if k[0] not in self.pinned and k[0] not in (a, b)]
                while len(self._kl) > self.cache_stages and evictable:
                    del self._kl[evictable.pop(0)]
        (ia, ta), (ib, tb) = self._kl[(a, probe)], self._kl[(b, probe)]
        i2t, t2i = float(kl_from_log_probs(ia, ib).mean()), float(kl_from_log_probs(ta, tb).mean())
        return ContrastiveKL(i2t, t2i, (i2t + t2i) / 2.0, len(ri), len(rt), float(self.temperature))

    # per pair ----------------------------------------------------------------------------------------
    def pair(self, a, b, probe, out):
        t0 = time.perf_counter()
        sa, sb = self.stage(a, probe), self.stage(b, probe)
        mods = self.probes[probe]
        summ, items, spectra = out["summary"], out["items"], out["spectra"]

        def put(modality, metric, value):
            summ.append((a, b, probe, modality, metric, float(value)))

        rots, fits = {}, {}
        for m in mods:
            xa, xb = self.unit(a, probe, m), self.unit(b, probe, m)
            check_pair(xa, xb, f"probe {probe!r}, {m}")
            rot = rotation_angles(xa, xb, normalized=True)
            rots[m] = rot
            dist = distribution(rot)
            for q in ("mean", "median", "p10", "p90"):
                put(m, f"rotation_{q}_deg", dist[q])
            topo = self.topology(a, b, probe, m)
            put(m, "topology_change_mean_deg", topo.mean_deg)
            put(m, "topology_pairs", topo.n_pairs)
            fr = self.fit_rows.get((probe, m))
            fa, fb = (xa, xb) if fr is None else (xa[fr], xb[fr])
            if m not in sa.gram:
                sa.gram[m] = gram(fa)
            prods = cross_products(fa, fb, gram_a=sa.gram[m])
            for centred in (False, True):
                fit = procrustes_from_products(prods, centred=centred)
                tag = "procrustes_centred" if centred else "procrustes"
                put(m, f"{tag}_angle_deg", fit.geodesic_deg)
                put(m, f"{tag}_max_angle_deg", fit.max_deg)
                put(m, f"{tag}_residual_frac", fit.residual_frac)
                spectra.append(_spectrum_frame(a, b, probe, m, centred, fit.angles_deg))
                if not centred:
                    fits[m] = fit
            rows = self.rows[(probe, m)]
            ov = overlap_from_indices(sa.knn[m], sb.knn[m])
            summary = summarise_overlap(ov, population=self.sizes[(probe, m)] if rows is not None else None)
            put(m, "knn_overlap_mean", summary.mean)
            put(m, "knn_overlap_ci_low", summary.ci_low)
            put(m, "knn_overlap_ci_high", summary.ci_high)
            put(m, "knn_overlap_items", summary.n_items)
            n = xa.shape[0]
            frame = {"rotation_deg": rot, "topology_change_deg": topo.per_item if topo.per_item is not None else np.full(n, np.nan)}
            full_ov = np.full(n, np.nan)
            full_ov[slice(None) if rows is None else rows] = ov
            frame["knn_overlap"] = full_ov
            if sa.ranks is not None:
                ra = sa.ranks.i2t if m == "image" else sa.ranks.t2i
                rb = sb.ranks.i2t if m == "image" else sb.ranks.t2i
                known = np.isfinite(ra.astype(float)) & np.isfinite(rb.astype(float))
                lost, gained = flips(ra == 1, rb == 1)
                direction = "i2t" if m == "image" else "t2i"
                put("cross", f"flips_{direction}_lost", lost[known].mean())
                put("cross", f"flips_{direction}_gained", gained[known].mean())
                frame.update(rank_a=ra.astype(float), rank_b=rb.astype(float),
                             flip_lost=np.where(known, lost, np.nan), flip_gained=np.where(known, gained, np.nan))
            items.append(self._item_frame(a, b, probe, m, frame))
        if len(mods) == 2:
            t2i = self.t2i[probe]
            change = sb.paired - sa.paired
            put("cross", "paired_angle_change_mean_deg", change.mean())
            put("cross", "paired_angle_abs_change_mean_deg", np.abs(change).mean())
            mismatch = rots["image"][t2i] - rots["text"]
            put("cross", "rotation_mismatch_mean_deg", np.abs(mismatch).mean())
            inter = intermodal_rotation(fits["image"].R, fits["text"].R)
            put("cross", "intermodal_rotation_deg", inter.geodesic_deg)
            put("cross", "intermodal_rotation_max_deg", inter.max_deg)
            spectra.append(_spectrum_frame(a, b, probe, "image_vs_text", False, inter.angles_deg))
            put("cross", "modality_gap_a", sa.gap)
            put("cross", "modality_gap_b", sb.gap)
            put("cross", "modality_gap_change", sb.gap - sa.gap)
            kl = self.kl(a, b, probe)
            put("cross", "contrastive_kl", kl.mean)
            put("cross", "contrastive_kl_i2t", kl.i2t)
            put("cross", "contrastive_kl_t2i", kl.t2i)
            put("cross", "contrastive_kl_rows", kl.n_rows_i2t + kl.n_rows_t2i)
            for key in ("i2t_R@1", "t2i_R@1", "rsum"):
                put("cross", f"{key}_delta", sb.scores[key] - sa.scores[key])
            items.append(self._item_frame(a, b, probe, "cross", {
                "paired_angle_a_deg": sa.paired, "paired_angle_b_deg": sb.paired,
                "paired_angle_change_deg": change, "rotation_mismatch_deg": mismatch}))
        self.timing["pairs_s"] += time.perf_counter() - t0

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


def _recall_ci(ranks: RetrievalRanks, population: dict) -> dict:
    """95% intervals (percent; normal approximation, finite-population correction) for R@K of sampled queries."""
    out = {}
    for direction, r in (("i2t", ranks.i2t), ("t2i", ranks.t2i)):
        r = np.asarray(r, dtype=np.float64)
        r = r[np.isfinite(r)]
        n, big_n = len(r), population[direction]
        for k in DEFAULT_KS:
            p = float(np.mean(r <= k)) if n else float("nan")
            fpc = np.sqrt((big_n - n) / max(1, big_n - 1)) if n < big_n else 0.0
            half = 1.96 * np.sqrt(p * (1 - p) / max(1, n - 1)) * fpc if n else float("nan")
            out[f"{direction}_R@{k}"] = (100.0 * max(0.0, p - half), 100.0 * min(1.0, p + half))
    return out


def _spectrum_frame(a, b, probe, kind, centred, angles) -> pd.DataFrame:
    return pd.DataFrame({"stage_a": a, "stage_b": b, "probe": probe, "kind": kind, "centred": centred,
                         "index": np.arange(len(angles)), "angle_deg": angles})


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


def _run_engine(engine: _Engine, pairs, stages, progress=False, learned_at=None) -> tuple:
    out = {"summary": [], "items": [], "spectra": []}
    retrieval, paired = [], []
    for probe in engine.probes:
        for i, (a, b) in enumerate(pairs):
            if progress:
                print(f"[{probe}] pair {i + 1}/{len(pairs)}: {a} -> {b}", flush=True)
            engine.pair(a, b, probe, out)
        for s in stages:
            sd = engine.stage(s, probe)
            if sd.scores is not None:
                for key, value in sd.scores.items():
                    direction, metric = ("both", "rsum") if key == "rsum" else key.split("_", 1)
                    retrieval.append((s, probe, direction, metric, value))
                paired.append(pd.DataFrame({"stage": s, "probe": probe, "row": np.arange(len(sd.paired)),
                                            "id": engine.ids(probe, "text", len(sd.paired)), "paired_angle_deg": sd.paired}))
    summary = pd.DataFrame(out["summary"], columns=SUMMARY_COLUMNS)
    items = pd.concat(out["items"], ignore_index=True) if out["items"] else pd.DataFrame(columns=SUMMARY_COLUMNS[:4] + ["row", "id"])
    spectra = pd.concat(out["spectra"], ignore_index=True) if out["spectra"] else pd.DataFrame(
        columns=["stage_a", "stage_b", "probe", "kind", "centred", "index", "angle_deg"])
    retrieval_df = pd.DataFrame(retrieval, columns=["stage", "probe", "direction", "metric", "value"])
    paired_df = pd.concat(paired, ignore_index=True) if paired else pd.DataFrame(columns=["stage", "probe", "row", "id", "paired_angle_deg"])
    continual = continual_from_retrieval(retrieval_df, list(stages), learned_at)
    return summary, items, retrieval_df, spectra, paired_df, continual


def _meta(engine: _Engine, stages, pairs, extra) -> dict:
    return {
        "backend": engine.backend.name,
        "backend_exact": engine.backend.exact,
        "k": engine.k,
        "fast": engine.fast,
        "fast_queries": engine.fast_queries if engine.fast else None,
        "knn_queries": {f"{p}/{m}": (engine.sizes[(p, m)] if r is None else len(r)) for (p, m), r in engine.rows.items()},
        "topology_max_items": engine.topology_max_items,
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
) -> RunAnalysis:
    """Analyse a run opened with ``open_run``: every metric for every stage pair and probe set.

    ``pairs`` overrides the default stage pairs (every stage against ``ref`` plus consecutive stages).
    ``fast`` samples ``fast_queries`` query items per probe and modality (same rows at every stage) for
    the kNN and retrieval metrics and reports a 95% CI for the neighbour overlap; Procrustes fits use
    ``fast_rows`` seeded rows. Topology change uses all pairs among at most ``topology_max_items`` items. ``learned_at`` maps a
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
                     fast_queries=fast_queries, fast_rows=fast_rows, topology_max_items=topology_max_items, progress=progress,
                     id_tables={p: run.probes[p] for p in names})
    engine.pinned = {ref_name} if any(ref_name in p for p in pairs) else set()
    t = time.perf_counter()
    tables = _run_engine(engine, pairs, used, progress, learned)
    meta = _meta(engine, used, pairs, {"run": str(run.path), "total_s": round(time.perf_counter() - t, 3)})
    return RunAnalysis(*tables, meta=meta, probes={p: run.probes[p] for p in names})


def analyze_arrays(reference: dict, candidate: dict, text_to_image=None, *, k: int = 10, fast: bool = False,
                   backend: str | Backend = "auto", seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
                   fast_queries: int = FAST_QUERIES, fast_rows: int = FAST_ROWS,
                   topology_max_items: int = EXACT_TOPOLOGY_MAX) -> RunAnalysis:
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
                     topology_max_items=topology_max_items)
    pairs = [("reference", "candidate")]
    t = time.perf_counter()
    tables = _run_engine(engine, pairs, list(stages))
    meta = _meta(engine, list(stages), pairs, {"run": None, "total_s": round(time.perf_counter() - t, 3)})
    return RunAnalysis(*tables, meta=meta)
