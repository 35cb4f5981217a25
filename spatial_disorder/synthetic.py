"""Synthetic runs with planted drift, for tests, demos and benchmarks (no model needed).

Stage 0 holds clustered, low-rank-ish image embeddings and captions that sit near their image (several
captions per image). Every later stage applies a planted orthogonal rotation with chosen plane angles to
each modality (optionally different for images and texts) plus a little fresh noise, so the analyzers'
answers are known: the Procrustes spectrum of stage 0 -> stage t recovers the planted angles.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .run import ProbeSet, write_run


def uniform_rotation(d: int, theta_deg: float) -> np.ndarray:
    """A rotation turning every coordinate plane (0,1), (2,3), ... by theta: every vector turns by exactly theta (d even)."""
    if d % 2:
        raise ValueError(f"uniform_rotation needs an even dimension, got d={d}")
    c, s = np.cos(np.radians(theta_deg)), np.sin(np.radians(theta_deg))
    r = np.zeros((d, d))
    for p in range(0, d, 2):
        r[p : p + 2, p : p + 2] = [[c, -s], [s, c]]
    return r


def planted_rotation(d: int, angles_deg, seed: int = 0, basis: np.ndarray | None = None) -> np.ndarray:
    """A d x d rotation with the given plane angles (degrees); identity elsewhere. The planes are spanned by column
    pairs (0, 1), (2, 3), ... of ``basis`` (orthonormal columns, e.g. a cloud's principal directions), or of a
    random orthogonal matrix when none is given."""
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    if 2 * len(angles) > d:
        raise ValueError(f"{len(angles)} plane angles need d >= {2 * len(angles)}, got d={d}")
    if basis is None:
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    else:
        q, _ = np.linalg.qr(np.column_stack([basis, np.random.default_rng(seed).normal(size=(d, d - basis.shape[1]))]))
        q[:, : basis.shape[1]] = basis
    block = np.eye(d)
    for p, theta in enumerate(np.radians(angles)):
        c, s = np.cos(theta), np.sin(theta)
        block[2 * p : 2 * p + 2, 2 * p : 2 * p + 2] = [[c, -s], [s, c]]
    return q @ block @ q.T


def principal_directions(*clouds: np.ndarray) -> np.ndarray:
    """Eigenvectors (columns, by decreasing variance) of the clouds' pooled second moment: where their data live."""
    moment = sum(x.T.astype(np.float64) @ x / len(x) for x in clouds)
    w, v = np.linalg.eigh(moment)
    return v[:, ::-1]


def clip_like_cloud(n: int, d: int, exponent: float = 1.2, mean: float = 1.0, seed: int = 0, basis: np.ndarray | None = None):
    """Unit rows shaped like real CLIP embeddings: a common mean direction (a narrow cone) plus a power-law spectrum
    (standard deviation k^-exponent along the k-th principal direction), so most directions are nearly empty.
    Returns (rows [n, d], basis [d, d]); ``basis[:, 0]`` is the mean direction, ``basis[:, 1:3]`` the main plane."""
    rng = np.random.default_rng(seed)
    if basis is None:
        basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    spread = (1.0 + np.arange(d - 1)) ** (-exponent)
    x = mean * basis[:, 0] + (rng.normal(size=(n, d - 1)) * spread) @ basis[:, 1:].T
    return x / np.linalg.norm(x, axis=1, keepdims=True), basis


def plane_rotation(u: np.ndarray, v: np.ndarray, theta_deg: float) -> np.ndarray:
    """The d x d rotation turning the plane of orthonormal u, v by theta (row-vector convention, x @ R) and fixing the rest."""
    c, s = np.cos(np.radians(theta_deg)), np.sin(np.radians(theta_deg))
    return (np.eye(len(u)) + (c - 1.0) * (np.outer(u, u) + np.outer(v, v)) + s * (np.outer(u, v) - np.outer(v, u)))


def structured_embeddings(n_images: int, captions_per_image: int, d: int, n_clusters: int | None = None,
                          rank: int | None = None, caption_noise: float = 0.35, seed: int = 0):
    """Clustered, low-rank-ish unit embeddings: ([n_images, d] images, [n_images * c, d] captions, text_to_image)."""
    rng = np.random.default_rng(seed)
    rank = rank or max(2, min(d, d // 4))
    n_clusters = n_clusters or max(2, int(np.sqrt(n_images)))
    basis, _ = np.linalg.qr(rng.normal(size=(d, rank)))
    scales = 1.0 / np.sqrt(1.0 + np.arange(rank))  # decaying spectrum
    centres = rng.normal(size=(n_clusters, rank)) * scales
    labels = rng.integers(0, n_clusters, n_images)
    latent = centres[labels] + 0.5 * rng.normal(size=(n_images, rank)) * scales
    img = latent @ basis.T + 0.05 * rng.normal(size=(n_images, d))
    t2i = np.repeat(np.arange(n_images), captions_per_image)
    txt = img[t2i] + caption_noise * np.linalg.norm(img, axis=1).mean() / np.sqrt(d) * rng.normal(size=(len(t2i), d))
    txt += 0.1 * img.mean(axis=0)  # a modality gap
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return norm(img), norm(txt), t2i


def drifted_stages(image, text, stages: int, rotation_deg, text_rotation_deg=None, noise: float = 0.0, seed: int = 0):
    """Stage t = stage 0 rotated by R^t (plane angles ``rotation_deg`` per stage step) plus optional noise. The rotation
    turns the leading principal planes of stage 0 (as real drift turns the directions the data fill), so fits made
    where the data live recover the planted angles."""
    d = image.shape[1]
    planes = principal_directions(image, text)[:, : 2 * max(len(np.atleast_1d(rotation_deg)), len(np.atleast_1d(text_rotation_deg or [])))]
    r_img = planted_rotation(d, rotation_deg, seed=seed + 1, basis=planes)
    r_txt = r_img if text_rotation_deg is None else planted_rotation(d, text_rotation_deg, seed=seed + 1, basis=planes)
    rng = np.random.default_rng(seed + 2)
    out = []
    cur_i, cur_t = image.astype(np.float64), text.astype(np.float64)
    for t in range(stages):
        if t:
            cur_i, cur_t = cur_i @ r_img, cur_t @ r_txt
        i, x = cur_i, cur_t
        if noise and t:
            i = i + noise / np.sqrt(d) * rng.normal(size=i.shape)
            x = x + noise / np.sqrt(d) * rng.normal(size=x.shape)
        out.append((i.astype(np.float32), x.astype(np.float32)))
    return out, r_img, r_txt


def make_synthetic_run(path: str | os.PathLike, n_images: int = 200, captions_per_image: int = 2, d: int = 32,
                       stages: int = 4, rotation_deg=(10.0, 5.0), text_rotation_deg=None, noise: float = 0.0,
                       seed: int = 0, probe: str = "synthetic", overwrite: bool = False):
    """Write a run with planted rotations; returns the path.

    Stage ``stage{t}`` equals stage 0 rotated by R^t, where R has plane angles ``rotation_deg`` (degrees,
    per stage step) for images and ``text_rotation_deg`` (default: the same R) for captions. With
    ``noise=0`` the Procrustes spectrum of stage0 -> stage1 is exactly ``rotation_deg``, the residual is
    0, and every cross-modal metric is unchanged when both modalities share R.
    """
    img, txt, t2i = structured_embeddings(n_images, captions_per_image, d, seed=seed)
    arrays, _, _ = drifted_stages(img, txt, stages, rotation_deg, text_rotation_deg, noise, seed)
    ids = [f"img{i:06d}" for i in range(n_images)]
    captions = [[f"synthetic caption {c} of image {i}" for c in range(captions_per_image)] for i in range(n_images)]
    ps = ProbeSet.from_captions(probe, pd.DataFrame({"id": ids, "domain": "synthetic"}), captions)
    meta = {"model": "synthetic", "mode": "synthetic", "seed": seed, "rotation_deg": list(np.atleast_1d(rotation_deg)),
            "text_rotation_deg": None if text_rotation_deg is None else list(np.atleast_1d(text_rotation_deg)), "noise": noise}
    return write_run(path, [ps], {f"stage{t}": {probe: {"image": i, "text": x}} for t, (i, x) in enumerate(arrays)},
                     metadata=meta, overwrite=overwrite)
