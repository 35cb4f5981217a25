"""Cross-stage retrieval: images embedded at one stage queried against captions embedded at another.

The diagonal is ordinary retrieval; off the diagonal it measures how compatible old and new embeddings
still are (a gallery indexed at one stage, queried with a model from another), which is the practical cost
of spatial disorder for anyone who does not re-index.
"""

from __future__ import annotations

import numpy as np

MAX_IMAGES = 5000  # larger probe sets are subsampled (with all captions of the kept images)


def subsample_rows(text_to_image: np.ndarray, n_images: int, max_images: int = MAX_IMAGES, seed: int = 0):
    """Image rows to keep, caption rows to keep, and the caption -> kept-image map."""
    t2i = np.asarray(text_to_image, dtype=np.int64)
    if n_images <= max_images:
        return np.arange(n_images), np.arange(len(t2i)), t2i
    keep = np.sort(np.random.default_rng(seed).choice(n_images, size=max_images, replace=False))
    remap = np.full(n_images, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    text_rows = np.flatnonzero(remap[t2i] >= 0)
    return keep, text_rows, remap[t2i[text_rows]]


def cross_stage_r1(run, probe: str, stages: list[str], backend=None, max_images: int = MAX_IMAGES) -> np.ndarray:
    """[stage, stage] matrix of image-to-text R@1 (%): images from the row stage, captions from the column stage."""
    from ..metrics.retrieval import retrieval_scores

    p = run.probes[probe]
    img_rows, txt_rows, t2i = subsample_rows(p.text_to_image, p.n_images, max_images)
    images = [np.asarray(run.embeddings(s, probe, "image")[img_rows], dtype=np.float32) for s in stages]
    texts = [np.asarray(run.embeddings(s, probe, "text")[txt_rows], dtype=np.float32) for s in stages]
    n = len(stages)
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            out[i, j] = retrieval_scores(images[i], texts[j], t2i, ks=(1,), backend=backend)["i2t_R@1"]
    return out
