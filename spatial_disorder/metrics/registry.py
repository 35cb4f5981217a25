"""The catalogue of summary metrics: name, modality kind, unit, formula, and which direction is worse.

``kind`` is ``"intra"`` (reported separately for the image and the text modality) or ``"cross"``.
``symmetry`` says what swapping stages a and b does: ``symmetric`` (unchanged), ``antisymmetric``
(sign flips; for flip counts: lost and gained swap) or ``none``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    name: str
    kind: str
    unit: str
    description: str
    formula: str
    worse_when: str
    symmetry: str = "symmetric"

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text") if self.kind == "intra" else ("cross",)


def _m(*args, **kw) -> tuple[str, MetricInfo]:
    info = MetricInfo(*args, **kw)
    return info.name, info


METRICS: dict[str, MetricInfo] = dict(
    [
        _m("rotation_mean_deg", "intra", "deg", "Mean per-item rotation angle (the paper's rotation-angle matrix entry).",
           "mean_i angle(a_i, b_i)", "higher"),
        _m("rotation_median_deg", "intra", "deg", "Median per-item rotation angle.", "median_i angle(a_i, b_i)", "higher"),
        _m("rotation_p10_deg", "intra", "deg", "10th percentile of per-item rotation angles.", "p10_i angle(a_i, b_i)", "higher"),
        _m("rotation_p90_deg", "intra", "deg", "90th percentile of per-item rotation angles.", "p90_i angle(a_i, b_i)", "higher"),
        _m("topology_change_mean_deg", "intra", "deg",
           "Mean change of the angle between two items of one modality (the paper's self-angle matrix); exact or on sampled pairs.",
           "mean_{i<j} |angle(a_i, a_j) - angle(b_i, b_j)|", "higher"),
        _m("topology_pairs", "intra", "count", "Number of item pairs behind topology_change_mean_deg.", "n(n-1)/2 or the sample size", "lower"),
        _m("procrustes_angle_deg", "intra", "deg", "Geodesic angle of the best orthogonal map R from a to b (uncentred).",
           "sqrt(sum_planes theta_p^2), R = argmin ||A R - B||_F", "higher"),
        _m("procrustes_max_angle_deg", "intra", "deg", "Largest plane angle of the Procrustes rotation (uncentred).", "max_p theta_p", "higher"),
        _m("procrustes_residual_frac", "intra", "fraction",
           "Share of the change not explained by a rigid rotation (0: pure rotation, 1: nothing explained).",
           "||A R - B||^2 / ||A - B||^2", "higher"),
        _m("procrustes_centred_angle_deg", "intra", "deg", "Geodesic Procrustes angle after centring both stages.",
           "as procrustes_angle_deg on A - mean(A), B - mean(B)", "higher"),
        _m("procrustes_centred_max_angle_deg", "intra", "deg", "Largest plane angle of the centred Procrustes rotation.",
           "max_p theta_p (centred)", "higher"),
        _m("procrustes_centred_residual_frac", "intra", "fraction", "Residual fraction after centring both stages.",
           "||A_c R_c - B_c||^2 / ||A_c - B_c||^2", "higher"),
        _m("knn_overlap_mean", "intra", "fraction", "Mean share of an item's k nearest neighbours (cosine, same modality) kept from a to b.",
           "mean_i |N_k^a(i) & N_k^b(i)| / k", "lower"),
        _m("knn_overlap_ci_low", "intra", "fraction", "Lower end of the 95% CI of knn_overlap_mean (equals the mean in exact mode).",
           "mean - 1.96 s / sqrt(q) * fpc", "lower"),
        _m("knn_overlap_ci_high", "intra", "fraction", "Upper end of the 95% CI of knn_overlap_mean.", "mean + 1.96 s / sqrt(q) * fpc", "lower"),
        _m("knn_overlap_items", "intra", "count", "Number of query items behind knn_overlap_mean (all items in exact mode).",
           "n or the sample size q", "lower"),
        _m("paired_angle_change_mean_deg", "cross", "deg", "Mean change of the angle between each caption and its image (b minus a).",
           "mean_j [angle(b^T_j, b^I_{g(j)}) - angle(a^T_j, a^I_{g(j)})]", "higher", "antisymmetric"),
        _m("paired_angle_abs_change_mean_deg", "cross", "deg", "Mean absolute change of the caption-image angle.",
           "mean_j |Delta paired angle_j|", "higher"),
        _m("rotation_mismatch_mean_deg", "cross", "deg",
           "Mean absolute difference between the rotation angle of a caption's image and of the caption itself.",
           "mean_j |rot^I_{g(j)} - rot^T_j|", "higher"),
        _m("intermodal_rotation_deg", "cross", "deg", "Geodesic angle of R_image^T R_text: how differently the two modalities rotated.",
           "sqrt(sum_planes theta_p(R_I^T R_T)^2)", "higher"),
        _m("intermodal_rotation_max_deg", "cross", "deg", "Largest plane angle of R_image^T R_text.", "max_p theta_p(R_I^T R_T)", "higher"),
        _m("modality_gap_a", "cross", "distance", "Modality gap at stage a.", "||mean_i a^I_i - mean_j a^T_j||_2", "higher"),
        _m("modality_gap_b", "cross", "distance", "Modality gap at stage b.", "||mean_i b^I_i - mean_j b^T_j||_2", "higher"),
        _m("modality_gap_change", "cross", "distance", "Change of the modality gap (b minus a).", "gap_b - gap_a", "higher", "antisymmetric"),
        _m("flips_i2t_lost", "cross", "fraction", "Share of images retrieved at rank 1 at a and not at b (image-to-text).",
           "mean_i [r^a_i = 1 and r^b_i > 1]", "higher", "antisymmetric"),
        _m("flips_i2t_gained", "cross", "fraction", "Share of images not at rank 1 at a and at rank 1 at b (image-to-text).",
           "mean_i [r^a_i > 1 and r^b_i = 1]", "lower", "antisymmetric"),
        _m("flips_t2i_lost", "cross", "fraction", "Share of captions retrieved at rank 1 at a and not at b (text-to-image).",
           "mean_j [r^a_j = 1 and r^b_j > 1]", "higher", "antisymmetric"),
        _m("flips_t2i_gained", "cross", "fraction", "Share of captions not at rank 1 at a and at rank 1 at b (text-to-image).",
           "mean_j [r^a_j > 1 and r^b_j = 1]", "lower", "antisymmetric"),
        _m("contrastive_kl", "cross", "nats",
           "Off-diagonal KL between the stages' contrastive-matrix rows (softmax of cosines / temperature), mean of both directions.",
           "mean over rows r of KL(softmax(S^a_r / tau) || softmax(S^b_r / tau))", "higher", "none"),
        _m("contrastive_kl_i2t", "cross", "nats", "contrastive_kl over image rows only.", "as contrastive_kl, image rows", "higher", "none"),
        _m("contrastive_kl_t2i", "cross", "nats", "contrastive_kl over caption rows only.", "as contrastive_kl, caption rows", "higher", "none"),
        _m("contrastive_kl_rows", "cross", "count", "Rows (image rows + caption rows) behind contrastive_kl.", "all rows or the sample",
           "lower"),
        _m("i2t_R@1_delta", "cross", "percent points", "Change of image-to-text R@1 (candidate b minus reference a).",
           "R@1_i2t(b) - R@1_i2t(a)", "lower", "antisymmetric"),
        _m("t2i_R@1_delta", "cross", "percent points", "Change of text-to-image R@1 (candidate b minus reference a).",
           "R@1_t2i(b) - R@1_t2i(a)", "lower", "antisymmetric"),
        _m("rsum_delta", "cross", "percent points", "Change of rsum (b minus a).", "rsum(b) - rsum(a)", "lower", "antisymmetric"),
    ]
)

# Norms over rotation planes, sqrt(sum_p theta_p^2): up to 180 * sqrt(d / 2) degrees, not 180.
GEODESIC = {"procrustes_angle_deg", "procrustes_centred_angle_deg", "intermodal_rotation_deg"}
# The ends a value can reach, where the unit alone does not say (embeddings are unit vectors: gaps are at most 2).
_RANGES = {"modality_gap_a": (0.0, 2.0), "modality_gap_b": (0.0, 2.0), "modality_gap_change": (-2.0, 2.0),
           "rsum_delta": (-600.0, 600.0)}
_UNIT_RANGES = {"deg": (0.0, 180.0), "fraction": (0.0, 1.0), "count": (0.0, math.inf), "nats": (0.0, math.inf),
                "percent points": (-100.0, 100.0), "distance": (0.0, math.inf)}


def value_range(name: str) -> tuple[float, float]:
    """The smallest and largest value a metric can take (inclusive); (-inf, inf) when unknown.

    Angles of one item or one plane lie in [0, 180] degrees, signed changes of them in [-180, 180]; geodesic
    norms over planes are only bounded below. A threshold at or beyond an end can never be violated.
    """
    if name in _RANGES:
        return _RANGES[name]
    info = METRICS.get(name)
    if info is None:
        return -math.inf, math.inf
    lo, hi = _UNIT_RANGES.get(info.unit, (-math.inf, math.inf))
    if name in GEODESIC:
        hi = math.inf
    if info.symmetry == "antisymmetric" and info.unit in ("deg", "distance") and lo == 0.0:
        lo = -hi  # a change (b minus a) of a non-negative quantity
    return lo, hi


# per-item columns of RunAnalysis.items, with units
ITEM_COLUMNS = {
    "rotation_deg": ("intra", "deg"),
    "topology_change_deg": ("intra", "deg"),
    "knn_overlap": ("intra", "fraction"),
    "paired_angle_a_deg": ("cross", "deg"),
    "paired_angle_b_deg": ("cross", "deg"),
    "paired_angle_change_deg": ("cross", "deg"),
    "rotation_mismatch_deg": ("cross", "deg"),
    "rank_a": ("cross", "rank"),
    "rank_b": ("cross", "rank"),
    "flip_lost": ("cross", "bool"),
    "flip_gained": ("cross", "bool"),
}
