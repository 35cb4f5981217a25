"""Inter-modal deviation between stages: paired image-text angles, rotation mismatch, the rotation
between the two modalities' Procrustes fits, the modality gap, retrieval flips and the off-diagonal
KL divergence of the contrastive matrix (the quantity Mod-X trains to keep small)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..knn import Backend, as_unit_rows, block_rows, get_backend
from .procrustes import spectrum_summary
from .retrieval import check_text_to_image
from .rotation import unit_angle_deg

DEFAULT_TEMPERATURE = 0.01  # CLIP's learned logit scale saturates at 100 = 1 / 0.01
KL_EXACT_MAX = 2048
KL_SAMPLE_ROWS = 256


def paired_angles(image, text, text_to_image, normalized: bool = False, block: int = 2048) -> np.ndarray:
    """Angle (degrees) between every caption and its own image at one stage."""
    img = image if normalized else as_unit_rows(image, "image embeddings")
    txt = text if normalized else as_unit_rows(text, "text embeddings")
    if img.shape[1] != txt.shape[1]:
        raise InputError(f"image embeddings have dimension {img.shape[1]} but text embeddings have {txt.shape[1]}")
    t2i = check_text_to_image(text_to_image, img.shape[0], txt.shape[0])
    out = np.empty(txt.shape[0])
    for s in range(0, txt.shape[0], block):
        out[s : s + block] = unit_angle_deg(txt[s : s + block], img[t2i[s : s + block]])
    return out


def centroid(x: np.ndarray, block: int = 65536) -> np.ndarray:
    total = np.zeros(x.shape[1])
    for s in range(0, x.shape[0], block):
        total += np.asarray(x[s : s + block]).sum(axis=0, dtype=np.float64)  # float64 sums without a float64 copy
    return total / x.shape[0]


def modality_gap(image, text, normalized: bool = False) -> float:
    """Euclidean distance between the centroids of the L2-normalised image and text embeddings."""
    img = image if normalized else as_unit_rows(image, "image embeddings")
    txt = text if normalized else as_unit_rows(text, "text embeddings")
    if img.shape[1] != txt.shape[1]:
        raise InputError(f"image embeddings have dimension {img.shape[1]} but text embeddings have {txt.shape[1]}")
    return float(np.linalg.norm(centroid(img) - centroid(txt)))


def rotation_mismatch(image_rotation_deg, text_rotation_deg, text_to_image) -> np.ndarray:
    """Per caption: rotation angle of its image minus its own rotation angle (degrees, signed)."""
    img = np.asarray(image_rotation_deg, dtype=np.float64)
    txt = np.asarray(text_rotation_deg, dtype=np.float64)
    t2i = check_text_to_image(text_to_image, len(img), len(txt))
    return img[t2i] - txt


@dataclass
class IntermodalRotation:
    """Spectrum of R_image^T R_text: how differently the two modalities were rotated (degrees)."""

    angles_deg: np.ndarray
    geodesic_deg: float
    max_deg: float


def intermodal_rotation(r_image: np.ndarray, r_text: np.ndarray) -> IntermodalRotation:
    """Angles of R_image^T R_text (identity, all zero, when both modalities moved by the same rotation)."""
    if r_image.shape != r_text.shape:
        raise InputError(f"rotation matrices differ in shape: {r_image.shape} vs {r_text.shape}")
    planes, geo, mx = spectrum_summary(r_image.T @ r_text)
    return IntermodalRotation(planes, geo, mx)


def flips(hit_a: np.ndarray, hit_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-1 retrieval flips: ``lost`` = hit at a and miss at b; ``gained`` = miss at a and hit at b."""
    a, b = np.asarray(hit_a, dtype=bool), np.asarray(hit_b, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"hit arrays differ in shape: {a.shape} vs {b.shape}")
    return a & ~b, ~a & b


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 with float64 sums (logits are bounded by 1 / temperature)."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True, dtype=np.float64)).astype(z.dtype)


@dataclass
class ContrastiveKL:
    """Mean KL(p_a || p_b) over rows of the image-text cosine matrix, softmax at ``temperature``.

    ``i2t`` averages image rows (distribution over captions), ``t2i`` caption rows (over images);
    ``mean`` is their average. Rows were sampled (seeded) when ``n_rows_*`` is below the item count.
    """

    i2t: float
    t2i: float
    mean: float
    n_rows_i2t: int
    n_rows_t2i: int
    temperature: float


def kl_rows(n_images: int, n_texts: int, exact_max: int = KL_EXACT_MAX, sample_rows: int = KL_SAMPLE_ROWS,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The image rows and caption rows that ``contrastive_kl`` uses (all, or a seeded sample)."""
    rng = np.random.default_rng(seed)

    def pick(n):
        return np.arange(n) if n <= exact_max else np.sort(rng.choice(n, size=min(n, sample_rows), replace=False))

    ri = pick(n_images)
    return ri, pick(n_texts)


def contrastive_log_probs(image, text, image_rows, text_rows, temperature: float = DEFAULT_TEMPERATURE,
                          backend: Backend | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One stage's share of the KL: log-softmax rows (float32) of the chosen image rows over all captions and of
    the chosen caption rows over all images (inputs are unit rows). Cacheable per stage."""
    backend = get_backend(backend or "auto")
    out = []
    for q, db in ((image[image_rows], text), (text[text_rows], image)):
        logp = np.empty((q.shape[0], db.shape[0]), dtype=np.float32)
        for r0, r1, c0, c1, sims in backend.similarity_tiles(q, db):  # square tiles: efficient products
            np.multiply(sims, np.float32(1.0 / temperature), out=logp[r0:r1, c0:c1])
        step = block_rows(db.shape[0], 1 << 22)
        for s in range(0, q.shape[0], step):
            logp[s : s + step] = _log_softmax(logp[s : s + step])
        out.append(logp)
    return out[0], out[1]


def kl_from_log_probs(logp_a: np.ndarray, logp_b: np.ndarray, block: int = 64) -> np.ndarray:
    """Per-row KL(p_a || p_b) from log-probabilities (float64 sums)."""
    out = np.empty(logp_a.shape[0])
    for s in range(0, logp_a.shape[0], block):
        la, lb = logp_a[s : s + block], logp_b[s : s + block]
        out[s : s + block] = np.einsum("ij,ij->i", np.exp(la), la - lb, dtype=np.float64)
    return out


def contrastive_kl(
    image_a, text_a, image_b, text_b,
    temperature: float = DEFAULT_TEMPERATURE,
    exact_max: int = KL_EXACT_MAX,
    sample_rows: int = KL_SAMPLE_ROWS,
    seed: int = 0,
    backend: Backend | str | None = None,
    normalized: bool = False,
) -> ContrastiveKL:
    """Off-diagonal KL between stage a's and stage b's contrastive matrices on the probe items (a diagnostic).

    Exact over all rows up to ``exact_max`` rows per direction, else on ``sample_rows`` seeded rows
    (every row still uses all columns). Asymmetric by definition: KL(a || b) != KL(b || a).
    """
    if temperature <= 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    backend = get_backend(backend or "auto")
    ia, ta, ib, tb = (
        x if normalized else as_unit_rows(x, name)
        for x, name in ((image_a, "image a"), (text_a, "text a"), (image_b, "image b"), (text_b, "text b"))
    )
    for x, y, what in ((ia, ib, "image"), (ta, tb, "text")):
        if x.shape != y.shape:
            raise InputError(f"{what}: stage a has shape {x.shape} but stage b has {y.shape}")
    ri, rt = kl_rows(ia.shape[0], ta.shape[0], exact_max, sample_rows, seed)
    kl = {}
    for key, rows, n_cols in (("i2t", ri, ta.shape[0]), ("t2i", rt, ia.shape[0])):
        step = block_rows(n_cols, 1 << 22)  # bounded memory: a few rows of log-probabilities at a time
        parts = []
        for s in range(0, len(rows), step):
            sub = rows[s : s + step]
            none = np.empty(0, dtype=np.int64)
            pick = (sub, none) if key == "i2t" else (none, sub)
            la = contrastive_log_probs(ia, ta, *pick, temperature, backend)[0 if key == "i2t" else 1]
            lb = contrastive_log_probs(ib, tb, *pick, temperature, backend)[0 if key == "i2t" else 1]
            parts.append(kl_from_log_probs(la, lb))
        kl[key] = float(np.concatenate(parts).mean())
    i2t, t2i = kl["i2t"], kl["t2i"]
    return ContrastiveKL(i2t, t2i, (i2t + t2i) / 2.0, len(ri), len(rt), float(temperature))
