"""Cross-modal retrieval: exact ranks (blocked, ties pessimistic), R@K, median/mean rank, rsum, rank-1 hits.

Ranks are 1-based. Text-to-image: a caption's rank is 1 + the number of *wrong* images whose cosine is at
least the cosine of its own image. Image-to-text: an image's rank is 1 + the number of captions of *other*
images whose cosine is at least the best cosine among its own captions (a hit on any caption counts).
"At least" resolves ties pessimistically: a tied wrong item ranks ahead. Cosines closer than ``tie_tol``
count as tied, so the answer does not depend on BLAS rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..knn import Backend, as_unit_rows, block_rows, get_backend

DEFAULT_KS = (1, 5, 10)
TIE_TOL = 1e-5


@dataclass
class RetrievalRanks:
    """Per-item 1-based ranks; ``i2t`` for image rows, ``t2i`` for caption rows (NaN where not queried)."""

    i2t: np.ndarray
    t2i: np.ndarray

    @property
    def i2t_hit1(self) -> np.ndarray:
        return self.i2t == 1

    @property
    def t2i_hit1(self) -> np.ndarray:
        return self.t2i == 1


def check_text_to_image(text_to_image, n_images: int, n_texts: int) -> np.ndarray:
    t2i = np.asarray(text_to_image)
    if t2i.shape != (n_texts,):
        raise InputError(f"text_to_image has shape {t2i.shape} but there are {n_texts} text rows")
    if not np.issubdtype(t2i.dtype, np.integer):
        raise InputError(f"text_to_image must hold integer image rows, not {t2i.dtype}")
    if n_texts and (t2i.min() < 0 or t2i.max() >= n_images):
        raise InputError(f"text_to_image refers to image rows outside 0..{n_images - 1}")
    return t2i.astype(np.int64)


def retrieval_ranks(
    image_emb,
    text_emb,
    text_to_image,
    backend: Backend | str | None = None,
    tie_tol: float = TIE_TOL,
    normalized: bool = False,
) -> RetrievalRanks:
    """Exact ranks in both directions from one blocked pass over the caption x image cosine matrix."""
    backend = get_backend(backend or "auto")
    img = image_emb if normalized else as_unit_rows(image_emb, "image embeddings")
    txt = text_emb if normalized else as_unit_rows(text_emb, "text embeddings")
    if img.shape[1] != txt.shape[1]:
        raise InputError(f"image embeddings have dimension {img.shape[1]} but text embeddings have {txt.shape[1]}")
    n_img, n_txt = img.shape[0], txt.shape[0]
    t2i = check_text_to_image(text_to_image, n_img, n_txt)
    if np.bincount(t2i, minlength=n_img).min() == 0:
        raise InputError("every image needs at least one caption for image-to-text retrieval")
    own = np.einsum("ij,ij->i", txt.astype(np.float64), img[t2i].astype(np.float64))
    best = np.full(n_img, -np.inf)
    np.maximum.at(best, t2i, own)
    t2i_rank = np.empty(n_txt, dtype=np.int64)
    i2t_ahead = np.zeros(n_img, dtype=np.int64)
    thr_img = (best - tie_tol).astype(np.float32)
    for start, stop, sims in backend.similarity_blocks(txt, img, rows=block_rows(n_img)):
        rows = np.arange(stop - start)
        sims[rows, t2i[start:stop]] = -np.inf  # the correct pair never counts against itself
        thr = (own[start:stop] - tie_tol).astype(np.float32)
        t2i_rank[start:stop] = 1 + np.count_nonzero(sims >= thr[:, None], axis=1)
        i2t_ahead += np.count_nonzero(sims >= thr_img[None, :], axis=0)
    return RetrievalRanks(i2t=1 + i2t_ahead, t2i=t2i_rank)


def sampled_ranks(image_emb, text_emb, text_to_image, image_rows, text_rows, backend=None, tie_tol: float = TIE_TOL) -> RetrievalRanks:
    """Exact ranks for a subset of queries only (inputs already unit rows); other entries are NaN."""
    backend = get_backend(backend or "auto")
    img, txt = image_emb, text_emb
    t2i = np.asarray(text_to_image, dtype=np.int64)
    n_img, n_txt = img.shape[0], txt.shape[0]
    out_t = np.full(n_txt, np.nan)
    out_i = np.full(n_img, np.nan)
    text_rows = np.asarray(text_rows, dtype=np.int64)
    image_rows = np.asarray(image_rows, dtype=np.int64)
    if len(text_rows):
        own = np.einsum("ij,ij->i", txt[text_rows].astype(np.float64), img[t2i[text_rows]].astype(np.float64))
        for start, stop, sims in backend.similarity_blocks(txt[text_rows], img):
            sims[np.arange(stop - start), t2i[text_rows[start:stop]]] = -np.inf
            out_t[text_rows[start:stop]] = 1 + np.count_nonzero(sims >= (own[start:stop] - tie_tol)[:, None].astype(np.float32), axis=1)
    if len(image_rows):
        order = np.argsort(t2i, kind="stable")
        bounds = np.searchsorted(t2i[order], np.arange(n_img + 1))
        counts = bounds[image_rows + 1] - bounds[image_rows]
        for start, stop, sims in backend.similarity_blocks(img[image_rows], txt):
            rows = image_rows[start:stop]
            rep = np.repeat(np.arange(stop - start), counts[start:stop])
            caps = np.concatenate([order[bounds[r] : bounds[r + 1]] for r in rows])
            own = np.einsum("ij,ij->i", txt[caps].astype(np.float64), img[rows[rep]].astype(np.float64))
            best = np.full(stop - start, -np.inf)
            np.maximum.at(best, rep, own)
            sims[rep, caps] = -np.inf  # the image's own captions never count against it
            out_i[rows] = 1 + np.count_nonzero(sims >= (best - tie_tol)[:, None].astype(np.float32), axis=1)
    return RetrievalRanks(i2t=out_i, t2i=out_t)


def scores_from_ranks(ranks: RetrievalRanks, ks=DEFAULT_KS) -> dict[str, float]:
    """R@K in percent, median and mean rank per direction, and rsum (sum of all R@K values)."""
    out: dict[str, float] = {}
    for direction, r in (("i2t", ranks.i2t), ("t2i", ranks.t2i)):
        r = np.asarray(r, dtype=np.float64)
        r = r[np.isfinite(r)]
        for k in ks:
            out[f"{direction}_R@{k}"] = float(100.0 * np.mean(r <= k)) if len(r) else float("nan")
        out[f"{direction}_medr"] = float(np.median(r)) if len(r) else float("nan")
        out[f"{direction}_meanr"] = float(np.mean(r)) if len(r) else float("nan")
    out["rsum"] = float(sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks))
    return out


def retrieval_scores(image_emb, text_emb, text_to_image, ks=DEFAULT_KS, backend=None) -> dict[str, float]:
    """Keys ``i2t_R@1 ... i2t_medr, i2t_meanr, t2i_R@1 ... t2i_meanr, rsum``; R@K in percent, ranks 1-based.

    ``text_to_image[j]`` is the image row of caption ``j``; many captions per image are allowed.
    """
    return scores_from_ranks(retrieval_ranks(image_emb, text_emb, text_to_image, backend=backend), ks)
