"""The built-in metric families, each declared once: metrics, flags, section, and the per-pair computation.

Registration order is the order of the summary rows, the headline table and the report's definitions.
Each ``pair`` function gets a ``PairContext`` (spatial_disorder/analysis.py) and only reads what the engine
computed once per stage (kNN lists, retrieval ranks, paired angles, centroids) or per pair (rotations).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .deviation import flips
from .neighbours import summarise_overlap
from .procrustes import (
    cross_products,
    joint_rotations,
    procrustes_from_products,
    rigid_residual_angles,
    rigid_share,
    small_linalg,
)
from .registry import Family, MetricInfo, register
from .rotation import distribution

M = MetricInfo
GEODESIC = (0.0, math.inf)  # a norm over rotation planes, sqrt(sum_p theta_p^2): up to 180 * sqrt(d / 2) degrees, not 180
UNIT_GAP = (0.0, 2.0)  # the distance between two means of unit vectors


# --- rotation ------------------------------------------------------------------------------------------------
def _rotation_pair(ctx) -> None:
    for m in ctx.modalities:
        rot = ctx.rotation(m)
        dist = distribution(rot)
        for q in ("mean", "median", "p10", "p90"):
            ctx.put(m, f"rotation_{q}_deg", dist[q])
        ctx.item(m, "rotation_deg", rot)


ROTATION = register(Family("rotation", "rotation", (
    M("rotation_mean_deg", "intra", "deg", "Mean per-item rotation angle (the paper's rotation-angle matrix entry).",
      "mean_i angle(a_i, b_i)", "higher", headline=True, compare=True),
    M("rotation_median_deg", "intra", "deg", "Median per-item rotation angle.", "median_i angle(a_i, b_i)", "higher"),
    M("rotation_p10_deg", "intra", "deg", "10th percentile of per-item rotation angles.", "p10_i angle(a_i, b_i)", "higher"),
    M("rotation_p90_deg", "intra", "deg", "90th percentile of per-item rotation angles.", "p90_i angle(a_i, b_i)", "higher"),
), _rotation_pair, {"rotation_deg": ("intra", "deg")}))


# --- rigid rotation (Procrustes) -----------------------------------------------------------------------------
def _procrustes_pair(ctx) -> None:
    """Uncentred and centred proper rotations per modality, each fitted in the principal subspace of the two stages
    (metrics/procrustes.py), the rigid share of the items' movement, then both modalities' rotations in one shared
    subspace and how they differ (the inter-modal rotation). Fast mode fits on the seeded fit rows and scores the rigid
    share on the sampled query items.

    The d x d products use every BLAS thread; the four fits (two modalities, uncentred and centred) are small LAPACK
    problems that gain nothing from threads inside one call, so they run side by side, one thread each."""
    engine, floor, products = ctx.engine, ctx.engine.rotation_floor, {}
    for m in ctx.modalities:
        fa, fb = engine.fit_unit(ctx.a, ctx.probe, m), engine.fit_unit(ctx.b, ctx.probe, m)
        products[m] = (cross_products(fa, fb, gram_a=engine.stage_gram(ctx.a, ctx.probe, m)), engine.stage_gram(ctx.b, ctx.probe, m))
    jobs = [(m, centred) for m in ctx.modalities for centred in (False, True)]
    with small_linalg(), ThreadPoolExecutor(max_workers=min(2, len(jobs))) as pool:
        fitted = dict(zip(jobs, pool.map(lambda job: procrustes_from_products(*products[job[0]], centred=job[1], floor=floor), jobs)))
    fits = {}
    for (m, centred), fit in fitted.items():
        tag = "procrustes_centred" if centred else "procrustes"
        ctx.put(m, f"{tag}_angle_deg", fit.geodesic_deg)
        ctx.put(m, f"{tag}_max_angle_deg", fit.max_deg)
        ctx.put(m, f"{tag}_residual_frac", fit.residual_frac)
        ctx.put(m, f"{tag}_dim", fit.dim)
        ctx.put(m, f"{tag}_variance_held", fit.variance_held)
        ctx.spectrum(m, centred, fit.angles_deg, fit.plane_share, fit.dim, fit.variance_held)
        if centred:
            continue
        fits[m] = fit
        rows = ctx.query_rows(m)  # fast mode: the sampled query items (the rigid share is a mean over items)
        every = slice(None) if rows is None else rows
        rot = ctx.rotation(m)
        residual = np.full(len(rot), np.nan)
        residual[every] = rigid_residual_angles(ctx.unit(ctx.a, m)[every], ctx.unit(ctx.b, m)[every], fit)
        per_item, share = rigid_share(rot[every], residual[every])
        ctx.put(m, "rigid_share", share)
        ctx.put(m, "rigid_residual_mean_deg", np.nanmean(residual))
        ctx.item(m, "rigid_residual_deg", residual)
        full = np.full(len(rot), np.nan)
        full[every] = per_item
        ctx.item(m, "rigid_share", full)
    if ctx.cross:
        joint = joint_rotations(products["image"], products["text"], floor=floor, fitted=(fits["image"], fits["text"]))
        ctx.put("cross", "intermodal_rotation_deg", joint.geodesic_deg)
        ctx.put("cross", "intermodal_rotation_max_deg", joint.max_deg)
        ctx.put("cross", "intermodal_rotation_dim", joint.dim)
        ctx.spectrum("image_vs_text", False, joint.angles_deg, joint.plane_share, joint.dim, joint.variance_held)


PROCRUSTES = register(Family("procrustes", "rotation", (
    M("procrustes_angle_deg", "intra", "deg",
      "Geodesic angle of the best proper rotation R from a to b, fitted where the data live (the principal subspace of "
      "both stages: directions with at least a tenth of the average variance).",
      "sqrt(sum_planes theta_p^2), R = argmin ||A R - B||_F over rotations of span(U)", "higher", headline=True, bounds=GEODESIC),
    M("procrustes_max_angle_deg", "intra", "deg", "Largest plane angle of that rotation.", "max_p theta_p", "higher"),
    M("procrustes_residual_frac", "intra", "fraction",
      "Share of the change not explained by the rigid rotation (0: pure rotation, 1: nothing explained).",
      "||A R - B||^2 / ||A - B||^2", "higher"),
    M("procrustes_dim", "intra", "count", "Dimension r of the principal subspace the rotation was fitted in.",
      "#{k : lambda_k(M) >= floor * tr(M) / d}, M = (A^T A + B^T B) / 2n", "higher", calibrate=False),
    M("procrustes_variance_held", "intra", "fraction", "Share of the two stages' variance inside that subspace.",
      "sum_{k <= r} lambda_k(M) / tr(M)", "lower", calibrate=False),
    M("procrustes_centred_angle_deg", "intra", "deg", "Geodesic Procrustes angle after centring both stages (same rule).",
      "as procrustes_angle_deg on A - mean(A), B - mean(B)", "higher", bounds=GEODESIC),
    M("procrustes_centred_max_angle_deg", "intra", "deg", "Largest plane angle of the centred Procrustes rotation.",
      "max_p theta_p (centred)", "higher"),
    M("procrustes_centred_residual_frac", "intra", "fraction", "Residual fraction after centring both stages.",
      "||A_c R_c - B_c||^2 / ||A_c - B_c||^2", "higher"),
    M("procrustes_centred_dim", "intra", "count", "Dimension of the centred fit's principal subspace.",
      "as procrustes_dim on the pooled covariance", "higher", calibrate=False),
    M("procrustes_centred_variance_held", "intra", "fraction", "Share of the pooled covariance inside the centred subspace.",
      "as procrustes_variance_held on the pooled covariance", "lower", calibrate=False),
    M("rigid_share", "intra", "fraction",
      "How much of the items' movement the best rigid rotation explains (1: a rotation a d x d matrix can undo; "
      "0: a change of shape).", "1 - sum_i angle(a_i R, b_i)^2 / sum_i angle(a_i, b_i)^2", "lower", headline=True, compare=True),
    M("rigid_residual_mean_deg", "intra", "deg",
      "Mean angle between each item's rigidly rotated old position and its new one: the movement no rotation explains.",
      "mean_i angle(a_i R, b_i)", "higher"),
    M("intermodal_rotation_deg", "cross", "deg",
      "Geodesic angle of R_image^T R_text, both fitted in the principal subspace of the two modalities at both stages: "
      "how differently the two modalities rotated.", "sqrt(sum_planes theta_p(R_I^T R_T)^2)", "higher", section="intermodal", headline=True, compare=True,
      bounds=GEODESIC),
    M("intermodal_rotation_max_deg", "cross", "deg", "Largest plane angle of R_image^T R_text.", "max_p theta_p(R_I^T R_T)", "higher", section="intermodal"),
    M("intermodal_rotation_dim", "cross", "count", "Dimension of the shared subspace of the inter-modal comparison.",
      "as procrustes_dim on the four pooled clouds", "higher", calibrate=False, section="intermodal"),
), _procrustes_pair, {"rigid_residual_deg": ("intra", "deg"), "rigid_share": ("intra", "fraction")}))


# --- topology ------------------------------------------------------------------------------------------------
def _topology_pair(ctx) -> None:
    for m in ctx.modalities:
        topo = ctx.engine.topology(ctx.a, ctx.b, ctx.probe, m)
        ctx.put(m, "topology_change_mean_deg", topo.mean_deg)
        ctx.put(m, "topology_pairs", topo.n_pairs)
        ctx.item(m, "topology_change_deg", topo.per_item if topo.per_item is not None else np.full(ctx.size(m), np.nan))


TOPOLOGY = register(Family("topology", "topology", (
    M("topology_change_mean_deg", "intra", "deg",
      "Mean change of the angle between two items of one modality (the paper's self-angle matrix); exact or on sampled pairs.",
      "mean_{i<j} |angle(a_i, a_j) - angle(b_i, b_j)|", "higher", headline=True, compare=True),
    M("topology_pairs", "intra", "count", "Number of item pairs behind topology_change_mean_deg.", "n(n-1)/2 or the sample size", "lower",
      calibrate=False),
), _topology_pair, {"topology_change_deg": ("intra", "deg")}))


# --- neighbours ----------------------------------------------------------------------------------------------
def _neighbours_pair(ctx) -> None:
    for m in ctx.modalities:
        rows = ctx.query_rows(m)
        ov = ctx.overlap(m)
        s = summarise_overlap(ov, population=ctx.size(m) if rows is not None else None)
        ctx.put(m, "knn_overlap_mean", s.mean)
        ctx.put(m, "knn_overlap_ci_low", s.ci_low)
        ctx.put(m, "knn_overlap_ci_high", s.ci_high)
        ctx.put(m, "knn_overlap_items", s.n_items)
        full = np.full(ctx.size(m), np.nan)
        full[slice(None) if rows is None else rows] = ov
        ctx.item(m, "knn_overlap", full)


NEIGHBOURS = register(Family("neighbours", "neighbours", (
    M("knn_overlap_mean", "intra", "fraction", "Mean share of an item's k nearest neighbours (cosine, same modality) kept from a to b.",
      "mean_i |N_k^a(i) & N_k^b(i)| / k", "lower", headline=True, compare=True),
    M("knn_overlap_ci_low", "intra", "fraction", "Lower end of the 95% CI of knn_overlap_mean (equals the mean in exact mode).",
      "mean - 1.96 s / sqrt(q) * fpc", "lower", calibrate=False),
    M("knn_overlap_ci_high", "intra", "fraction", "Upper end of the 95% CI of knn_overlap_mean.", "mean + 1.96 s / sqrt(q) * fpc", "lower",
      calibrate=False),
    M("knn_overlap_items", "intra", "count", "Number of query items behind knn_overlap_mean (all items in exact mode).",
      "n or the sample size q", "lower", calibrate=False),
), _neighbours_pair, {"knn_overlap": ("intra", "fraction")}))


# --- retrieval -------------------------------------------------------------------------------------------
def _retrieval_pair(ctx) -> None:
    sa, sb = ctx.sa, ctx.sb
    if sa.ranks is None:
        return
    for m in ctx.modalities:
        ra = (sa.ranks.i2t if m == "image" else sa.ranks.t2i).astype(float)
        rb = (sb.ranks.i2t if m == "image" else sb.ranks.t2i).astype(float)
        known = np.isfinite(ra) & np.isfinite(rb)
        lost, gained = flips(ra == 1, rb == 1)
        direction = "i2t" if m == "image" else "t2i"
        ctx.put("cross", f"flips_{direction}_lost", lost[known].mean())
        ctx.put("cross", f"flips_{direction}_gained", gained[known].mean())
        ctx.item(m, "rank_a", ra)
        ctx.item(m, "rank_b", rb)
        ctx.item(m, "flip_lost", np.where(known, lost, np.nan))
        ctx.item(m, "flip_gained", np.where(known, gained, np.nan))
    for key in ("i2t_R@1", "t2i_R@1", "rsum"):
        ctx.put("cross", f"{key}_delta", sb.scores[key] - sa.scores[key])


RETRIEVAL = register(Family("retrieval", "retrieval", (
    M("i2t_R@1_delta", "cross", "percent points", "Change of image-to-text R@1 (candidate b minus reference a).",
      "R@1_i2t(b) - R@1_i2t(a)", "lower", "antisymmetric", headline=True, compare=True),
    M("t2i_R@1_delta", "cross", "percent points", "Change of text-to-image R@1 (candidate b minus reference a).",
      "R@1_t2i(b) - R@1_t2i(a)", "lower", "antisymmetric", headline=True, compare=True),
    M("rsum_delta", "cross", "percent points", "Change of rsum (b minus a).", "rsum(b) - rsum(a)", "lower", "antisymmetric",
      bounds=(-600.0, 600.0)),  # rsum adds six R@K values
    M("flips_i2t_lost", "cross", "fraction", "Share of images retrieved at rank 1 at a and not at b (image-to-text).",
      "mean_i [r^a_i = 1 and r^b_i > 1]", "higher", "antisymmetric"),
    M("flips_i2t_gained", "cross", "fraction", "Share of images not at rank 1 at a and at rank 1 at b (image-to-text).",
      "mean_i [r^a_i > 1 and r^b_i = 1]", "lower", "antisymmetric"),
    M("flips_t2i_lost", "cross", "fraction", "Share of captions retrieved at rank 1 at a and not at b (text-to-image).",
      "mean_j [r^a_j = 1 and r^b_j > 1]", "higher", "antisymmetric"),
    M("flips_t2i_gained", "cross", "fraction", "Share of captions not at rank 1 at a and at rank 1 at b (text-to-image).",
      "mean_j [r^a_j > 1 and r^b_j = 1]", "lower", "antisymmetric"),
), _retrieval_pair, {"rank_a": ("cross", "rank"), "rank_b": ("cross", "rank"), "flip_lost": ("cross", "bool"),
                     "flip_gained": ("cross", "bool")}))


# --- cross-stage retrieval --------------------------------------------------------------------------------
def _cross_stage_pair(ctx) -> None:
    if ctx.sa.ranks is None:
        return
    for metric, (img, txt) in (("cross_stage_i2t_R@1_ab", (ctx.a, ctx.b)), ("cross_stage_i2t_R@1_ba", (ctx.b, ctx.a))):
        ctx.put("cross", metric, ctx.engine.cross_stage_r1(img, txt, ctx.probe).value)


CROSS_STAGE = register(Family("cross_stage", "retrieval", (
    M("cross_stage_i2t_R@1_ab", "cross", "percent",
      "Image-to-text R@1 with images embedded at stage a and captions at stage b: can an old gallery serve a new model?",
      "mean_i [rank of i's captions among b-captions, queried with a-image i, = 1]", "lower", "none", compare=True),
    M("cross_stage_i2t_R@1_ba", "cross", "percent", "Image-to-text R@1 with images embedded at stage b and captions at stage a.",
      "as cross_stage_i2t_R@1_ab with a and b swapped", "lower", "none"),
), _cross_stage_pair))


# --- inter-modal deviation -----------------------------------------------------------------------------------
def _deviation_pair(ctx) -> None:
    if not ctx.cross:
        return
    sa, sb = ctx.sa, ctx.sb
    change = sb.paired - sa.paired
    mismatch = ctx.rotation("image")[ctx.text_to_image] - ctx.rotation("text")
    ctx.put("cross", "paired_angle_change_mean_deg", change.mean())
    ctx.put("cross", "paired_angle_abs_change_mean_deg", np.abs(change).mean())
    ctx.put("cross", "rotation_mismatch_mean_deg", np.abs(mismatch).mean())
    ctx.put("cross", "modality_gap_a", sa.gap)
    ctx.put("cross", "modality_gap_b", sb.gap)
    ctx.put("cross", "modality_gap_change", sb.gap - sa.gap)
    for col, v in (("paired_angle_a_deg", sa.paired), ("paired_angle_b_deg", sb.paired), ("paired_angle_change_deg", change),
                   ("rotation_mismatch_deg", mismatch)):
        ctx.item("cross", col, v)


DEVIATION = register(Family("deviation", "intermodal", (
    M("paired_angle_change_mean_deg", "cross", "deg", "Mean change of the angle between each caption and its image (b minus a).",
      "mean_j [angle(b^T_j, b^I_{g(j)}) - angle(a^T_j, a^I_{g(j)})]", "higher", "antisymmetric", headline=True, compare=True),
    M("paired_angle_abs_change_mean_deg", "cross", "deg", "Mean absolute change of the caption-image angle.",
      "mean_j |Delta paired angle_j|", "higher"),
    M("rotation_mismatch_mean_deg", "cross", "deg",
      "Mean absolute difference between the rotation angle of a caption's image and of the caption itself.",
      "mean_j |rot^I_{g(j)} - rot^T_j|", "higher", headline=True, compare=True),
    M("modality_gap_a", "cross", "distance", "Modality gap at stage a.", "||mean_i a^I_i - mean_j a^T_j||_2", "higher", calibrate=False,
      bounds=UNIT_GAP),
    M("modality_gap_b", "cross", "distance", "Modality gap at stage b.", "||mean_i b^I_i - mean_j b^T_j||_2", "higher", calibrate=False,
      bounds=UNIT_GAP),
    M("modality_gap_change", "cross", "distance", "Change of the modality gap (b minus a).", "gap_b - gap_a", "higher", "antisymmetric",
      bounds=(-UNIT_GAP[1], UNIT_GAP[1])),
), _deviation_pair, {"paired_angle_a_deg": ("cross", "deg"), "paired_angle_b_deg": ("cross", "deg"),
                     "paired_angle_change_deg": ("cross", "deg"), "rotation_mismatch_deg": ("cross", "deg")}))


# --- contrastive KL ------------------------------------------------------------------------------------------
def _kl_pair(ctx) -> None:
    if not ctx.cross:
        return
    kl = ctx.engine.kl(ctx.a, ctx.b, ctx.probe)
    ctx.put("cross", "contrastive_kl", kl.mean)
    ctx.put("cross", "contrastive_kl_i2t", kl.i2t)
    ctx.put("cross", "contrastive_kl_t2i", kl.t2i)
    ctx.put("cross", "contrastive_kl_rows", kl.n_rows_i2t + kl.n_rows_t2i)


CONTRASTIVE_KL = register(Family("contrastive_kl", "intermodal", (
    M("contrastive_kl", "cross", "nats",
      "Off-diagonal KL between the stages' contrastive-matrix rows (softmax of cosines / temperature), mean of both directions.",
      "mean over rows r of KL(softmax(S^a_r / tau) || softmax(S^b_r / tau))", "higher", "none"),
    M("contrastive_kl_i2t", "cross", "nats", "contrastive_kl over image rows only.", "as contrastive_kl, image rows", "higher", "none"),
    M("contrastive_kl_t2i", "cross", "nats", "contrastive_kl over caption rows only.", "as contrastive_kl, caption rows", "higher", "none"),
    M("contrastive_kl_rows", "cross", "count", "Rows (image rows + caption rows) behind contrastive_kl.", "all rows or the sample",
      "lower", calibrate=False),
), _kl_pair))
