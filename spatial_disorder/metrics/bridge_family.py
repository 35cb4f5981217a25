"""The bridge family: can an upgraded model keep the old vector index? (docs/bridge.md)

Per stage pair (a = old model, b = new model), for probe sets with both modalities: cross-model retrieval
without a map, and the default bridge (orthogonal, index direction) fitted on a seeded calibration half of the
images and scored against full re-embedding on the held-out half (metrics/bridge.py). Once per analysis, the
learning curve of the reference stage against the last stage (``RunAnalysis.bridge_curve``).

Cost: the held-out old/old retrieval of a stage is computed once and reused by every pair it is in; a pair adds
two cross-model and two bridged retrieval passes, two agreement passes and two d x d fits on the held-out and
calibration halves. Probe sets with more than ``MAX_IMAGES`` images (``FAST_MAX_IMAGES`` in fast mode) are
bridged on a seeded subset of that many images and their captions (``bridge_fit_images`` and
``bridge_heldout_images`` say how many).
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from . import families as _families  # noqa: F401  (the built-in families register first, so they are listed first)
from .bridge import (
    AGREEMENT_QUERIES,
    CURVE_COLUMNS,
    CURVE_SIZES,
    DEFAULT_FRACTION,
    METHODS,
    Split,
    calibration_split,
    evaluate_bridge,
    held_out_recall,
    learning_curve,
)
from .registry import Family, MetricInfo, register
from .retrieval import DEFAULT_KS

MAX_IMAGES = 2000
FAST_MAX_IMAGES = 1000
BRIDGE_CURVE_COLUMNS = ["probe", "stage_a", "stage_b", *CURVE_COLUMNS]
DIRECTIONS = ("t2i", "i2t")
_DIR_WORDS = {"t2i": ("captions", "images"), "i2t": ("images", "captions")}


@dataclass(frozen=True)
class View:
    """The probe rows the bridge uses (all, or a seeded subset of images with their captions) and its split,
    numbered within the view."""

    images: np.ndarray
    texts: np.ndarray
    split: Split
    full: bool


def bridge_view(n_images: int, text_to_image, max_images: int, seed: int) -> View:
    """Rows of the images (at most ``max_images``, seeded) and of their captions, and the calibration split of them."""
    t2i = np.asarray(text_to_image, dtype=np.int64)
    full = n_images <= max_images
    images = np.arange(n_images) if full else np.sort(np.random.default_rng([seed, n_images, 6]).choice(n_images, max_images, replace=False))
    texts = np.arange(len(t2i)) if full else np.flatnonzero(np.isin(t2i, images))
    local = t2i if full else np.searchsorted(images, t2i[texts])
    return View(images, texts, calibration_split(local, len(images), DEFAULT_FRACTION, seed), full)


class _State:
    """Per-analysis caches: each probe's view, each stage's held-out self-retrieval."""

    def __init__(self):
        self.views: dict = {}
        self.recall: dict = {}


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(engine) -> _State:
    with _STATES_LOCK:  # pair threads (analysis._analyse_pairs) may ask at once
        if engine not in _STATES:
            _STATES[engine] = _State()
        return _STATES[engine]


def _view(engine, probe) -> View:
    cap = FAST_MAX_IMAGES if engine.fast else MAX_IMAGES
    return engine._once(_state(engine).views, probe, lambda: bridge_view(engine.sizes[(probe, "image")], engine.t2i[probe], cap,
                                                                         engine.seed))


def _arrays(engine, stage, probe, view: View) -> dict:
    img, txt = engine.unit(stage, probe, "image"), engine.unit(stage, probe, "text")
    return {"image": img, "text": txt} if view.full else {"image": img[view.images], "text": txt[view.texts]}


def _self_recall(engine, stage, probe, arrays, view) -> dict:
    return engine._once(_state(engine).recall, (stage, probe), lambda: held_out_recall(arrays, view.split))


def _bridge_pair(ctx) -> None:
    if not ctx.cross:
        return
    t = time.perf_counter()
    engine, probe = ctx.engine, ctx.probe
    try:
        view = _view(engine, probe)
        ref, cand = _arrays(engine, ctx.a, probe, view), _arrays(engine, ctx.b, probe, view)
        ev = evaluate_bridge(ref, cand, view.split.text_to_image, split=view.split, methods=("orthogonal",), directions=("index",),
                             normalized=True, old=_self_recall(engine, ctx.a, probe, ref, view),
                             new=_self_recall(engine, ctx.b, probe, cand, view), table=False)
    except InputError:  # too few images to calibrate on (fewer than two per side): no bridge values
        return
    for name in NAMES:
        ctx.put("cross", name, ev.metrics.get(name, float("nan")))
    engine.add_time("bridge_s", time.perf_counter() - t)


def _bridge_run(engine, ref: str, last: str) -> dict:
    """Recovery and agreement against the number of calibration images, reference -> last stage, every probe set with
    both modalities (orthogonal and ridge maps, index direction; sizes ``CURVE_SIZES`` on the same held-out items)."""
    frames = []
    t = time.perf_counter()
    if ref != last:
        for probe, mods in engine.probes.items():
            if len(mods) != 2 or engine.sizes[(probe, "image")] < 2:
                continue
            view = _view(engine, probe)
            ref_arrays, last_arrays = _arrays(engine, ref, probe, view), _arrays(engine, last, probe, view)
            curve = learning_curve(ref_arrays, last_arrays, view.split.text_to_image, sizes=CURVE_SIZES, methods=METHODS,
                                   directions=("index",), seed=engine.seed, normalized=True, split=view.split,
                                   old=_self_recall(engine, ref, probe, ref_arrays, view),
                                   new=_self_recall(engine, last, probe, last_arrays, view))
            curve.insert(0, "stage_b", last)
            curve.insert(0, "stage_a", ref)
            curve.insert(0, "probe", probe)
            frames.append(curve)
    engine.add_time("bridge_curve_s", time.perf_counter() - t)
    frames = [f for f in frames if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=BRIDGE_CURVE_COLUMNS)
    return {"bridge_curve": table.reindex(columns=BRIDGE_CURVE_COLUMNS)}


def _metrics() -> tuple[MetricInfo, ...]:
    M = MetricInfo
    out = []
    for d in DIRECTIONS:
        q, g = _DIR_WORDS[d]
        out.append(M(f"bridge_{d}_R@1_recovery", "cross", "ratio",
                     f"Bridged {d} R@1 over the new model's own R@1 on the same held-out items: how much of full re-embedding the "
                     "bridged old index recovers (above 1 when the new model is worse than the bridged old index).",
                     f"R@1_{d}(bridged) / R@1_{d}(new/new)", "lower", "none", headline=True, compare=True))
    for m in ("image", "text"):
        out.append(M(f"bridge_{m}_agreement", "cross", "fraction",
                     f"Share of held-out {m}s whose bridged old vector finds its own re-embedded vector first among the held-out "
                     f"new vectors (at most {AGREEMENT_QUERIES:,} seeded queries, each against every held-out target): does the "
                     "bridged index point where re-embedding would?",
                     f"mean_i [rank of B_i among held-out B, queried with A_i M, = 1] ({m}s)", "lower", "none", compare=True))
    for d in DIRECTIONS:
        q, g = _DIR_WORDS[d]
        for k in DEFAULT_KS:
            out.append(M(f"cross_{d}_R@{k}", "cross", "percent",
                         f"R@{k} of new-model {q} against the old model's {g} index, no map (held-out items).",
                         f"new {q} vs old {g}, R@{k}", "lower", "none", compare=(k == 1 and d == "t2i")))
        for k in DEFAULT_KS:
            out.append(M(f"bridge_{d}_R@{k}", "cross", "percent",
                         f"R@{k} of new-model {q} against the old {g} index carried into the new space by the bridge (held-out items).",
                         f"new {q} vs old {g} @ M, R@{k}", "lower", "none"))
    for d in DIRECTIONS:
        out.append(M(f"cross_{d}_compatible", "cross", "0/1",
                     f"BCT criterion without a map: 1 when cross-model {d} R@1 is at least the old model's own (old/old) R@1.",
                     f"[R@1_{d}(cross) >= R@1_{d}(old/old)]", "lower", "none", calibrate=False))
        out.append(M(f"bridge_{d}_compatible", "cross", "0/1",
                     f"BCT criterion with the bridge: 1 when bridged {d} R@1 is at least the old model's own (old/old) R@1.",
                     f"[R@1_{d}(bridged) >= R@1_{d}(old/old)]", "lower", "none", calibrate=False))
    for m in ("image", "text"):
        out.append(M(f"bridge_{m}_residual_frac", "cross", "ratio",
                     f"Share of the {m}s' drift the bridge leaves (held-out items); 1 minus it is the rigid share of the drift.",
                     "||A M - B||^2 / ||A - B||^2", "higher", "none"))
    for side, word in (("old", "old model (stage a)"), ("new", "new model (stage b)")):
        for d in DIRECTIONS:
            for k in DEFAULT_KS:
                out.append(M(f"heldout_{side}_{d}_R@{k}", "cross", "percent",
                             f"The {word}'s own {d} R@{k} on the bridge's held-out items ({side}/{side}).",
                             f"{side} vs {side}, R@{k}", "lower", "none", calibrate=False))
    out.append(M("bridge_fit_images", "cross", "count", "Calibration images the bridge was fitted on.", "round(n / 2)", "lower",
                 "symmetric", gate=False, calibrate=False))
    out.append(M("bridge_heldout_images", "cross", "count", "Held-out images every bridge score is computed on.", "n - round(n / 2)",
                 "lower", "symmetric", gate=False, calibrate=False))
    return tuple(out)


BRIDGE = register(Family("bridge", "upgrade", _metrics(), _bridge_pair, run=_bridge_run))
NAMES = tuple(m.name for m in BRIDGE.metrics)
