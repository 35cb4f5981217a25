"""What the gate compares: per probe set, a reference and a candidate embedding of the same items.

Three sources: two stages of one run, the same stage of two runs, or bare ``.npy`` arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..run.compat import check_same_items


@dataclass
class Comparison:
    """Reference and candidate embeddings ({"image": [n, d], "text": [m, d]}) of one probe set's items."""

    probe: str
    reference: dict
    candidate: dict
    text_to_image: np.ndarray | None
    label: str  # e.g. "stage0 -> stage4" or "runA:stage4 -> runB:stage4"


def _probe_names(run, probes) -> list[str]:
    names = list(run.probes) if not probes else list(probes)
    unknown = [p for p in names if p not in run.probes]
    if unknown:
        raise InputError(f"{run.path}: unknown probe set(s) {unknown}; the run has {list(run.probes)}")
    return names


def _stage(run, stage) -> str:
    try:
        return run.stage_name(int(stage) if isinstance(stage, str) and stage.lstrip("-").isdigit() else stage)
    except KeyError as exc:
        raise InputError(f"{run.path}: {exc.args[0]}") from None


def _arrays(run, stage: str, probe: str) -> dict:
    return {m: np.asarray(run.embeddings(stage, probe, m), dtype=np.float32) for m in ("image", "text")}


def from_stages(run, ref, candidate, probes=None) -> list[Comparison]:
    """Stage ``ref`` against stage ``candidate`` of one run (names or indices; -1 is the last stage)."""
    a, b = _stage(run, ref), _stage(run, candidate)
    if a == b:
        raise InputError(f"reference and candidate are the same stage ({a!r})")
    return [Comparison(p, _arrays(run, a, p), _arrays(run, b, p), run.probes[p].text_to_image, f"{a} -> {b}") for p in _probe_names(run, probes)]


def from_runs(reference, candidate, stage=-1, probes=None) -> list[Comparison]:
    """The same stage (default: each run's last) of two runs over the same probe items."""
    out = []
    sa, sb = _stage(reference, stage), _stage(candidate, stage)
    names = _probe_names(reference, probes)
    check_same_items(reference, candidate, names, purpose="check")
    for p in names:
        out.append(Comparison(p, _arrays(reference, sa, p), _arrays(candidate, sb, p), reference.probes[p].text_to_image,
                              f"{Path(str(reference.path)).name}:{sa} -> {Path(str(candidate.path)).name}:{sb}"))
    return out


def load_npy(path: str | os.PathLike, what: str, ndim: int = 2) -> np.ndarray:
    """Load one .npy file (no pickles) and check its shape; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: cannot read {what} as .npy ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != ndim:
        raise InputError(f"{path}: {what} must be a {ndim}-D array, got shape {getattr(arr, 'shape', None)}")
    if ndim == 2 and not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{path}: {what} must hold floats, not {arr.dtype}")
    return arr


def from_arrays(ref_image=None, ref_text=None, cand_image=None, cand_text=None, text_to_image=None) -> list[Comparison]:
    """Two embedding sets of the same items from .npy files (either modality may be left out, on both sides)."""
    ref, cand = {}, {}
    for mod, r, c in (("image", ref_image, cand_image), ("text", ref_text, cand_text)):
        if (r is None) != (c is None):
            raise InputError(f"give both --ref-{mod} and --cand-{mod}, or neither")
        if r is not None:
            ref[mod] = load_npy(r, f"reference {mod} embeddings")
            cand[mod] = load_npy(c, f"candidate {mod} embeddings")
            if ref[mod].shape != cand[mod].shape:
                raise InputError(f"{c}: candidate {mod} embeddings have shape {cand[mod].shape}, reference has {ref[mod].shape}")
    if not ref:
        raise InputError("no arrays given: pass --ref-image/--cand-image and/or --ref-text/--cand-text")
    t2i = None
    if text_to_image is not None:
        t2i = load_npy(text_to_image, "text-to-image index", ndim=1)
        if not np.issubdtype(t2i.dtype, np.integer):
            raise InputError(f"{text_to_image}: text-to-image index must hold integers, not {t2i.dtype}")
    elif len(ref) == 2 and ref["image"].shape[0] == ref["text"].shape[0]:
        t2i = np.arange(ref["image"].shape[0])
    elif len(ref) == 2:
        raise InputError(f"{ref['image'].shape[0]} images and {ref['text'].shape[0]} captions: pass --text-to-image to pair them")
    return [Comparison("arrays", ref, cand, t2i, "reference -> candidate")]


def analyse(comparisons: list[Comparison], k: int = 10, fast: bool = False, backend="auto", seed: int = 0) -> pd.DataFrame:
    """Tidy summary [probe, modality, metric, value] of every comparison (one ``analyze_arrays`` per probe set)."""
    from ..analysis import analyze_arrays

    frames = []
    for c in comparisons:
        result = analyze_arrays(c.reference, c.candidate, c.text_to_image, k=k, fast=fast, backend=backend, seed=seed)
        s = result.summary.copy()
        s["probe"] = c.probe
        frames.append(s[["probe", "modality", "metric", "value"]])
    return pd.concat(frames, ignore_index=True)
