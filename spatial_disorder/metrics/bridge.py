"""Upgrade without re-indexing: cross-model retrieval, and a fitted d x d bridge between two models' spaces.

Notation: reference (old) embeddings A and candidate (new) embeddings B of the same items, per modality,
rows L2-normalised. A bridge is a linear map M, fitted per modality on a seeded calibration split of the
items and scored on the held-out rest only:

- ``orthogonal`` (default): M = U V^T where A_fit^T B_fit = U S V^T (orthogonal Procrustes, products
  accumulated in float64 from float32 row blocks, never an n x n matrix). With fewer calibration rows n
  than dimensions d, A^T B cannot determine all d directions, so the map is fitted where the calibration
  data live (the principal subspace of both sides, directions with at least a tenth of the average
  variance, at most n of them, as in metrics/procrustes.py) and is the identity elsewhere;
- ``ridge``: M = (A_fit^T A_fit + lambda I)^-1 A_fit^T B_fit with lambda = ridge * tr(A_fit^T A_fit) / d.

Directions of use: ``index`` fits old -> new and carries the old index into the new space (new queries are
searched against A M); ``query`` fits new -> old and carries new queries into the old space (the old index is
untouched). Arrays in, dataclasses and DataFrames out; no I/O. Formulas and defaults: docs/bridge.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import InputError
from ..knn import as_unit_rows
from .procrustes import DEFAULT_FLOOR, polar_factor, principal_basis, small_linalg
from .retrieval import DEFAULT_KS, RetrievalRanks, check_text_to_image, retrieval_ranks

METHODS = ("orthogonal", "ridge")
DIRECTIONS = ("index", "query")
MODALITIES = ("image", "text")
DEFAULT_FRACTION = 0.5
DEFAULT_RIDGE = 1e-2
CURVE_SIZES = (50, 100, 300, None)  # calibration images; None = every held-in image
# Agreement ranks every held-out target for at most this many seeded queries per modality: ranking all n queries costs
# an n x n product (COCO's 5 captions per image make the captions' pass 25 times the images'), and 1,000 queries give a
# 95% interval of at most +-3.1 points, as fine as the images' own agreement on 1,000 held-out images.
AGREEMENT_QUERIES = 1000
CURVE_COLUMNS = ["calibration_images", "method", "direction", "fit_texts", "t2i_R@1", "i2t_R@1", "t2i_R@1_recovery",
                 "i2t_R@1_recovery", "image_agreement", "text_agreement", "image_residual_frac", "text_residual_frac",
                 "held_images", "note"]
_BLOCK = 8192


# ---------------------------------------------------------------- calibration split


@dataclass
class Split:
    """Image rows used to fit (in seeded order, so prefixes are nested subsets) and held out (sorted).

    Captions follow their image: a caption is in the calibration split exactly when its image is.
    """

    fit_images: np.ndarray
    held_images: np.ndarray
    text_to_image: np.ndarray

    def texts_of(self, images: np.ndarray) -> np.ndarray:
        """Caption rows (ascending) whose image is among ``images``."""
        return np.flatnonzero(np.isin(self.text_to_image, images))

    @property
    def fit_texts(self) -> np.ndarray:
        return self.texts_of(self.fit_images)

    @property
    def held_texts(self) -> np.ndarray:
        return self.texts_of(self.held_images)

    def held_text_to_image(self) -> np.ndarray:
        """text_to_image of the held-out captions, renumbered to rows of the held-out images."""
        return np.searchsorted(self.held_images, self.text_to_image[self.held_texts])

    def prefix(self, n_images: int) -> Split:
        """The same held-out items with only the first ``n_images`` calibration images (a nested subset)."""
        return Split(self.fit_images[:n_images], self.held_images, self.text_to_image)


def calibration_split(text_to_image, n_images: int, fraction: float = DEFAULT_FRACTION, seed: int = 0) -> Split:
    """A seeded split of the images: round(fraction * n) calibrate the map, the rest score it."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"calibration fraction must lie strictly between 0 and 1, not {fraction}")
    t2i = np.asarray(text_to_image, dtype=np.int64)
    if n_images < 2:
        raise InputError(f"a calibration split needs at least 2 images, got {n_images}")
    n_fit = min(n_images - 1, max(1, int(round(fraction * n_images))))
    order = np.random.default_rng(seed).permutation(n_images)
    return Split(order[:n_fit].copy(), np.sort(order[n_fit:]), t2i)


# ---------------------------------------------------------------- fitting


def min_fit_rows(method: str, d_in: int, d_out: int) -> int:
    """Fewest calibration rows that determine the map. Ridge is regularised, so two rows suffice; so does an
    orthogonal map between spaces of one width (below d rows it is fitted in the calibration data's principal
    subspace, see ``subspace_orthogonal``). Between spaces of different widths it needs one row per dimension
    (below that, A^T B is rank-deficient and the map on the missing directions is arbitrary)."""
    check_method(method)
    return min(d_in, d_out) if method == "orthogonal" and d_in != d_out else 2


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"unknown bridge method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise InputError(f"unknown bridge direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    return direction


def fit_products(source, target, with_gram: bool = False, normalized: bool = False, block: int = _BLOCK,
                 with_target_gram: bool = False):
    """C = S^T T (and G = S^T S, H = T^T T if asked) over unit rows, from float32 row blocks summed in float64.

    Rows are normalised block by block, so a memory-mapped array is read once and never copied whole.
    Returns (C, G) or, with ``with_target_gram``, (C, G, H).
    """
    n, d_in = source.shape
    d_out = target.shape[1]
    c = np.zeros((d_in, d_out))
    g = np.zeros((d_in, d_in)) if with_gram else None
    h = np.zeros((d_out, d_out)) if with_target_gram else None
    for s in range(0, n, block):
        x, y = source[s : s + block], target[s : s + block]
        if normalized:
            x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
        else:
            x, y = as_unit_rows(x, f"source rows {s}..{s + len(x) - 1}"), as_unit_rows(y, f"target rows {s}..{s + len(y) - 1}")
        c += x.T @ y
        if with_gram:
            g += x.T @ x
        if with_target_gram:
            h += y.T @ y
    return (c, g, h) if with_target_gram else (c, g)


def subspace_orthogonal(c: np.ndarray, g: np.ndarray, h: np.ndarray, n: int, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """The orthogonal map fitted where n calibration rows live: M = I + U (W - I) U^T.

    U (d x r) spans the principal subspace of the pooled second moment (S^T S + T^T T) / 2n (directions with at
    least ``floor`` of the average variance, at most n of them: A^T B has rank <= n, so more would leave part of
    the map arbitrary), and W = polar factor of U^T (S^T T) U, the best orthogonal map inside it. M is orthogonal
    (cosines inside the carried index are kept) and leaves the directions the calibration data do not fill as they
    are. Needs d_in == d_out."""
    with small_linalg(len(c)):
        basis, _ = principal_basis((g + h) / (2.0 * n), floor)
        u = basis[:, : max(1, min(basis.shape[1], n))]
        return np.eye(len(c)) + u @ (polar_factor(u.T @ c @ u) - np.eye(u.shape[1])) @ u.T


def fit_map(source, target, method: str = "orthogonal", ridge: float = DEFAULT_RIDGE, normalized: bool = False,
            what: str = "calibration items", block: int = _BLOCK, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """The [d_in, d_out] float64 matrix M with source @ M ~ target (rows paired item by item).

    An orthogonal map with fewer rows than dimensions is fitted in the rows' principal subspace (``floor``:
    the variance floor of ``principal_basis``) and is the identity elsewhere (``subspace_orthogonal``)."""
    check_method(method)
    if source.ndim != 2 or target.ndim != 2:
        raise InputError(f"{what}: expected [n, d] arrays, got shapes {tuple(source.shape)} and {tuple(target.shape)}")
    if source.shape[0] != target.shape[0]:
        raise InputError(f"{what}: {source.shape[0]} source rows but {target.shape[0]} target rows; the rows must be the same items")
    need = min_fit_rows(method, source.shape[1], target.shape[1])
    if source.shape[0] < need:
        raise InputError(f"{what}: {source.shape[0]} rows are too few to fit the {method} map in {source.shape[1]} dimensions "
                         f"(needs at least {need}); calibrate on more items" + (" or use ridge" if method == "orthogonal" else ""))
    if method == "ridge" and not (np.isfinite(ridge) and ridge > 0):
        raise InputError(f"ridge strength must be a positive number, not {ridge}")
    n, d_in, d_out = source.shape[0], source.shape[1], target.shape[1]
    if method == "orthogonal" and n < d_in and d_in == d_out:
        c, g, h = fit_products(source, target, with_gram=True, normalized=normalized, block=block, with_target_gram=True)
        return subspace_orthogonal(c, g, h, n, floor)
    c, g = fit_products(source, target, with_gram=method == "ridge", normalized=normalized, block=block)
    with small_linalg(max(d_in, d_out)):
        if method == "orthogonal":
            return polar_factor(c) if d_in == d_out else _polar_rectangular(c)
        lam = ridge * np.trace(g) / g.shape[0]
        return np.linalg.solve(g + lam * np.eye(g.shape[0]), c)


def _polar_rectangular(c: np.ndarray) -> np.ndarray:
    """The orthogonal (semi-orthogonal) polar factor of a d_in x d_out cross-moment of different dimensions."""
    u, _, vt = np.linalg.svd(c, full_matrices=False)
    return u @ vt


def apply_map(x, matrix: np.ndarray) -> np.ndarray:
    """x @ M as float32 unit rows (a cosine index compares directions only)."""
    y = np.asarray(x, dtype=np.float32) @ matrix.astype(np.float32)
    return as_unit_rows(y, "mapped rows")


# ---------------------------------------------------------------- scoring


def _t2i_ranks(images, texts, text_to_image) -> np.ndarray:
    return retrieval_ranks(images, texts, text_to_image, normalized=True, directions=("t2i",)).t2i


def _i2t_ranks(images, texts, text_to_image) -> np.ndarray:
    return retrieval_ranks(images, texts, text_to_image, normalized=True, directions=("i2t",)).i2t


def recall_at(ranks: RetrievalRanks, ks=DEFAULT_KS) -> dict[str, float]:
    """R@K in percent per direction: keys ``t2i_R@K`` and ``i2t_R@K``."""
    out = {}
    for direction in ("t2i", "i2t"):
        r = np.asarray(getattr(ranks, direction), dtype=np.float64)
        for k in ks:
            out[f"{direction}_R@{k}"] = float(100.0 * np.mean(r <= k)) if len(r) else float("nan")
    return out


def paired_ranks(t2i_pair, i2t_pair, text_to_image) -> RetrievalRanks:
    """Text-to-image ranks from one (images, texts) pair and image-to-text ranks from another.

    Cross-model and bridged retrieval search one model's queries against the other model's index, so the
    two directions use different pairs of arrays (all unit rows).
    """
    return RetrievalRanks(i2t=_i2t_ranks(*i2t_pair, text_to_image), t2i=_t2i_ranks(*t2i_pair, text_to_image))


def cross_retrieval(reference: dict, candidate: dict, text_to_image, ks=DEFAULT_KS) -> dict[str, float]:
    """New queries against the old index, no map: ``cross_t2i_R@K`` (new captions vs old images) and
    ``cross_i2t_R@K`` (new images vs old captions), in percent."""
    ref, cand = _unit_pair(reference, "reference"), _unit_pair(candidate, "candidate")
    t2i = check_text_to_image(text_to_image, ref["image"].shape[0], ref["text"].shape[0])
    ranks = paired_ranks((ref["image"], cand["text"]), (cand["image"], ref["text"]), t2i)
    return {f"cross_{k}": v for k, v in recall_at(ranks, ks).items()}


def agreement(carried: np.ndarray, target: np.ndarray, max_queries: int | None = AGREEMENT_QUERIES, seed: int = 0) -> float:
    """Share of rows whose carried-over vector finds its own target vector first among all target rows
    (ties pessimistic, as in retrieval). With more than ``max_queries`` rows (``None``: no limit) a seeded sample of
    that many rows is queried, each still against every target row: an unbiased estimate of the share."""
    rows = agreement_rows(len(target), max_queries, seed)
    return float(np.mean(_t2i_ranks(target, carried[rows], rows) == 1)) if len(rows) else float("nan")


def agreement_rows(n: int, max_queries: int | None = AGREEMENT_QUERIES, seed: int = 0) -> np.ndarray:
    """The query rows ``agreement`` ranks: every row, or ``max_queries`` seeded rows in order."""
    if max_queries is None or n <= max_queries:
        return np.arange(n)
    if max_queries < 1:
        raise InputError(f"agreement needs at least one query row, got max_queries={max_queries}")
    return np.sort(np.random.default_rng([seed, n, 7]).choice(n, size=max_queries, replace=False))


def _unit_pair(arrays: dict, side: str) -> dict:
    missing = [m for m in MODALITIES if m not in arrays or arrays[m] is None]
    if missing:
        raise InputError(f"{side} embeddings lack the {' and '.join(missing)} modality; the bridge needs images and captions")
    out = {m: as_unit_rows(arrays[m], f"{side} {m} embeddings") for m in MODALITIES}
    if out["image"].shape[1] != out["text"].shape[1]:
        raise InputError(f"{side}: image embeddings have dimension {out['image'].shape[1]} but text embeddings have {out['text'].shape[1]}")
    return out


def _check_items(ref: dict, cand: dict) -> None:
    for m in MODALITIES:
        if ref[m].shape[0] != cand[m].shape[0]:
            raise InputError(f"candidate has {cand[m].shape[0]} {m} rows but reference has {ref[m].shape[0]}; the rows must be the same items")


@dataclass
class BridgeMaps:
    """The fitted maps of one setting, per modality ([d_in, d_out] float64), with the rows they were fitted on."""

    method: str
    direction: str
    image: np.ndarray
    text: np.ndarray
    fit_images: np.ndarray
    fit_texts: np.ndarray


def fit_bridge(ref: dict, cand: dict, split: Split, method: str = "orthogonal", direction: str = "index",
               ridge: float = DEFAULT_RIDGE) -> BridgeMaps:
    """Fit one map per modality on the calibration rows (inputs already unit rows)."""
    check_direction(direction)
    rows = {"image": split.fit_images, "text": split.fit_texts}
    maps = {}
    for m in MODALITIES:
        src, dst = (ref, cand) if direction == "index" else (cand, ref)
        maps[m] = fit_map(src[m][rows[m]], dst[m][rows[m]], method, ridge, normalized=True,
                          what=f"calibration {m}s ({len(rows[m])} of them)")
    return BridgeMaps(method, direction, maps["image"], maps["text"], np.sort(split.fit_images), rows["text"])


def score_bridge(ref_held: dict, cand_held: dict, held_t2i, maps: BridgeMaps, ks=DEFAULT_KS,
                 agreement_queries: int | None = AGREEMENT_QUERIES) -> dict[str, float]:
    """Bridged R@K and agreement on held-out rows (unit rows) for one fitted setting (no recovery yet); agreement on at
    most ``agreement_queries`` seeded rows per modality (``agreement``)."""
    if maps.direction == "index":  # old index carried into the new space; new queries
        img_index = apply_map(ref_held["image"], maps.image)
        txt_index = apply_map(ref_held["text"], maps.text)
        ranks = paired_ranks((img_index, cand_held["text"]), (cand_held["image"], txt_index), held_t2i)
        carried, target, source = {"image": img_index, "text": txt_index}, cand_held, ref_held
    else:  # new queries carried into the old space; old index untouched
        img_query = apply_map(cand_held["image"], maps.image)
        txt_query = apply_map(cand_held["text"], maps.text)
        ranks = paired_ranks((ref_held["image"], txt_query), (img_query, ref_held["text"]), held_t2i)
        carried, target, source = {"image": img_query, "text": txt_query}, ref_held, cand_held
    out = recall_at(ranks, ks)
    for m in MODALITIES:
        out[f"{m}_agreement"] = agreement(carried[m], target[m], agreement_queries)
        out[f"{m}_residual_frac"] = residual_frac(source[m], carried[m], target[m])
    return out


def residual_frac(source: np.ndarray, carried: np.ndarray, target: np.ndarray) -> float:
    """||carried - target||^2 / ||source - target||^2: the share of the drift the map leaves (1 - the rigid
    share for an orthogonal map); NaN when the spaces differ in dimension or nothing moved."""
    if source.shape != target.shape:
        return float("nan")
    moved, left = _squared_distance(source, target), _squared_distance(carried, target)
    return left / moved if moved > 0 else float("nan")


def _squared_distance(x: np.ndarray, y: np.ndarray, block: int = 8192) -> float:
    """sum ||x_i - y_i||^2, accumulated in float64 block by block (no full-size float64 copies)."""
    total = 0.0
    for s in range(0, len(x), block):
        diff = np.subtract(x[s : s + block], y[s : s + block], dtype=np.float64)
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


@dataclass
class BridgeEvaluation:
    """Everything measured on the held-out items of one split.

    ``table``: one row per setting (``old/old``, ``new/new``, ``cross``, then ``bridge <method> <direction>``)
    with R@K per direction, recovery, agreement and the BCT criterion; ``metrics``: flat name -> value for
    the default setting; ``maps``: the fitted maps by (method, direction).
    """

    table: pd.DataFrame
    metrics: dict[str, float]
    maps: dict[tuple[str, str], BridgeMaps]
    split: Split
    default: tuple[str, str] = ("orthogonal", "index")
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)


def _recovery(row: dict, new: dict) -> dict:
    out = {}
    for d in ("t2i", "i2t"):
        denom = new[f"{d}_R@1"]
        out[f"{d}_R@1_recovery"] = row[f"{d}_R@1"] / denom if denom > 0 else float("nan")
    return out


def _bct(row: dict, old: dict) -> dict:
    return {f"{d}_bct": float(row[f"{d}_R@1"] >= old[f"{d}_R@1"]) for d in ("t2i", "i2t")}


def evaluate_bridge(reference: dict, candidate: dict, text_to_image, split: Split | None = None, methods=METHODS,
                    directions=DIRECTIONS, fraction: float = DEFAULT_FRACTION, seed: int = 0, ridge: float = DEFAULT_RIDGE,
                    ks=DEFAULT_KS, default: tuple[str, str] = ("orthogonal", "index"), normalized: bool = False,
                    old: dict | None = None, new: dict | None = None, table: bool = True, with_cross: bool = True,
                    agreement_queries: int | None = AGREEMENT_QUERIES) -> BridgeEvaluation:
    """Fit every (method, direction) on the calibration split and score all settings on the held-out items.

    A setting whose calibration split is too small for its method is skipped with the reason (the default
    setting is not: it raises ``InputError``). ``old`` / ``new``: the held-out old/old and new/new R@K of this
    split when already known (``held_out_recall``; the analysis engine computes them once per stage).
    ``table=False`` leaves ``table`` empty (the flat ``metrics`` only, for the per-pair analysis); ``with_cross=False``
    skips the map-free cross-model row (the learning curve needs the bridged rows only). ``agreement_queries``: the
    agreement's query budget per modality (``agreement``; ``None`` ranks every held-out row).
    """
    ref = reference if normalized else _unit_pair(reference, "reference")
    cand = candidate if normalized else _unit_pair(candidate, "candidate")
    _check_items(ref, cand)
    t2i = check_text_to_image(text_to_image, ref["image"].shape[0], ref["text"].shape[0])
    split = split or calibration_split(t2i, ref["image"].shape[0], fraction, seed)
    rows = {"image": split.held_images, "text": split.held_texts}
    ref_h = {m: ref[m][rows[m]] for m in MODALITIES}
    cand_h = {m: cand[m][rows[m]] for m in MODALITIES}
    held_t2i = split.held_text_to_image()
    old = old if old is not None else held_out_recall(ref, split, ks)
    new = new if new is not None else held_out_recall(cand, split, ks)
    records = [{"setting": "old/old", **old}, {"setting": "new/new", **new}]
    if with_cross:
        cross = recall_at(paired_ranks((ref_h["image"], cand_h["text"]), (cand_h["image"], ref_h["text"]), held_t2i), ks)
        records.append({"setting": "cross", **cross, **_recovery(cross, new), **_bct(cross, old)})
    maps, skipped = {}, {}
    for method in methods:
        for direction in directions:
            try:
                fitted = fit_bridge(ref, cand, split, method, direction, ridge)
            except InputError as exc:
                if (method, direction) == tuple(default):
                    raise
                skipped[(method, direction)] = str(exc)
                continue
            maps[(method, direction)] = fitted
            row = score_bridge(ref_h, cand_h, held_t2i, fitted, ks, agreement_queries)
            records.append({"setting": f"bridge {method} {direction}", "method": method, "direction": direction,
                            **row, **_recovery(row, new), **_bct(row, old)})
    sizes = {"fit_images": len(split.fit_images), "fit_texts": len(split.fit_texts), "held_images": len(split.held_images),
             "held_texts": len(split.held_texts)}
    metrics = _flat({r["setting"]: r for r in records}, tuple(default), split, ks)
    if not table:
        return BridgeEvaluation(pd.DataFrame(), metrics, maps, split, tuple(default), skipped)
    frame = pd.DataFrame.from_records([{**r, **sizes} for r in records])
    return BridgeEvaluation(frame, metrics, maps, split, tuple(default), skipped)


def held_out_recall(arrays: dict, split: Split, ks=DEFAULT_KS) -> dict[str, float]:
    """R@K (percent) of one model's own retrieval on the held-out items of ``split`` (unit rows in)."""
    img, txt = arrays["image"][split.held_images], arrays["text"][split.held_texts]
    return recall_at(retrieval_ranks(img, txt, split.held_text_to_image(), normalized=True), ks)


def flat_metrics(ev: BridgeEvaluation, ks=DEFAULT_KS) -> dict[str, float]:
    """Name -> value: held-out old/old and new/new R@K, ``cross_*``, and ``bridge_*`` for the default setting."""
    return _flat({r["setting"]: r for r in ev.table.to_dict("records")}, ev.default, ev.split, ks)


def _flat(rows: dict, default: tuple[str, str], split: Split, ks=DEFAULT_KS) -> dict[str, float]:
    out: dict[str, float] = {}
    for setting, prefix in (("old/old", "heldout_old_"), ("new/new", "heldout_new_"), ("cross", "cross_")):
        if setting in rows:
            out.update({f"{prefix}{d}_R@{k}": float(rows[setting][f"{d}_R@{k}"]) for d in ("t2i", "i2t") for k in ks})
    if "cross" in rows:
        out.update({f"cross_{d}_compatible": float(rows["cross"][f"{d}_bct"]) for d in ("t2i", "i2t")})
    row = rows.get(f"bridge {default[0]} {default[1]}")
    if row is not None:
        out.update({f"bridge_{d}_R@{k}": float(row[f"{d}_R@{k}"]) for d in ("t2i", "i2t") for k in ks})
        out.update({f"bridge_{d}_R@1_recovery": float(row[f"{d}_R@1_recovery"]) for d in ("t2i", "i2t")})
        out.update({f"bridge_{d}_compatible": float(row[f"{d}_bct"]) for d in ("t2i", "i2t")})
        for key in ("image_agreement", "text_agreement", "image_residual_frac", "text_residual_frac"):
            out[f"bridge_{key}"] = float(row[key])
    out["bridge_fit_images"] = float(len(split.fit_images))
    out["bridge_heldout_images"] = float(len(split.held_images))
    return out


def bridge_metrics(reference: dict, candidate: dict, text_to_image, seed: int = 0, **options) -> dict[str, float]:
    """The registrable form: (reference arrays, candidate arrays, text_to_image, seed) -> name -> value.

    Only the default setting (orthogonal, index; half of the images calibrate) is fitted.
    """
    options.setdefault("methods", ("orthogonal",))
    options.setdefault("directions", ("index",))
    return evaluate_bridge(reference, candidate, text_to_image, seed=seed, **options).metrics


def learning_curve(reference: dict, candidate: dict, text_to_image, sizes=CURVE_SIZES, methods=METHODS,
                   directions=("index",), fraction: float = DEFAULT_FRACTION, seed: int = 0,
                   ridge: float = DEFAULT_RIDGE, normalized: bool = False, split: Split | None = None,
                   old: dict | None = None, new: dict | None = None,
                   agreement_queries: int | None = AGREEMENT_QUERIES) -> pd.DataFrame:
    """Recovery and agreement against the number of calibration images, on one fixed held-out set.

    Calibration sets are nested prefixes of the seeded calibration order; ``None`` in ``sizes`` means every
    held-in image. Sizes larger than the held-in set are dropped; a size too small for a method gives a
    row with NaN values and the reason in ``note``. ``split`` (default: ``calibration_split`` of ``fraction`` and
    ``seed``) and the held-out ``old`` / ``new`` R@K of that split may be passed when already known, as ``evaluate_bridge``
    takes them.
    """
    ref = reference if normalized else _unit_pair(reference, "reference")
    cand = candidate if normalized else _unit_pair(candidate, "candidate")
    _check_items(ref, cand)
    t2i = check_text_to_image(text_to_image, ref["image"].shape[0], ref["text"].shape[0])
    full = split or calibration_split(t2i, ref["image"].shape[0], fraction, seed)
    n_all = len(full.fit_images)
    wanted = sorted({n_all if s is None else int(s) for s in sizes if s is None or 0 < int(s) <= n_all})
    # the held-out items are the same for every size
    old = old if old is not None else held_out_recall(ref, full)
    new = new if new is not None else held_out_recall(cand, full)
    frames = []
    for n in wanted:
        ev = evaluate_bridge(ref, cand, t2i, split=full.prefix(n), methods=methods, directions=directions, ridge=ridge,
                             default=("", ""), normalized=True, old=old, new=new, with_cross=False,
                             agreement_queries=agreement_queries)
        rows = ev.table[ev.table["setting"].str.startswith("bridge")].copy()
        rows["note"] = ""
        for (method, direction), why in ev.skipped.items():
            rows = pd.concat([rows, pd.DataFrame([{"setting": f"bridge {method} {direction}", "method": method,
                                                   "direction": direction, "fit_images": n, "note": why}])], ignore_index=True)
        rows["calibration_images"] = n
        frames.append(rows)
    cols = CURVE_COLUMNS
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    return out[[c for c in cols if c in out.columns]].sort_values(["method", "direction", "calibration_images"], ignore_index=True)
