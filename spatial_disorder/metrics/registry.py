"""The metric registry: every metric family declared once, with its metrics and what it computes.

A ``Family`` states its metric names, units, modality kind, better direction, report section, and which
metrics are headline / compared / gated / calibrated (``MetricInfo`` flags), and computes its values per
stage pair from a ``PairContext`` (spatial_disorder/analysis.py). ``register`` adds a family; the analysis
engine loops over ``FAMILIES``; metrics.json, the report, ``compare``, ``check`` and ``check --calibrate``
read the flags. The built-in families live in ``metrics/families.py`` (docs/metrics.md: "Adding a metric").

``kind`` is ``"intra"`` (reported separately for the image and the text modality) or ``"cross"``.
``symmetry`` says what swapping stages a and b does: ``symmetric`` (unchanged), ``antisymmetric``
(sign flips; for flip counts: lost and gained swap) or ``none``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

SECTIONS = ("retrieval", "rotation", "topology", "neighbours", "intermodal", "other")


@dataclass(frozen=True)
class MetricInfo:
    """One summary metric. The flags say where it is used: ``headline`` (terminal and overview table, in
    registration order), ``compare`` (the ``sd-analyze compare`` figures), ``gate`` (may be named in a thresholds
    file) and ``calibrate`` (``check --calibrate`` proposes a threshold; off for bookkeeping values)."""

    name: str
    kind: str
    unit: str
    description: str
    formula: str
    worse_when: str
    symmetry: str = "symmetric"
    section: str = "other"
    family: str = ""
    headline: bool = False
    compare: bool = False
    gate: bool = True
    calibrate: bool = True

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text") if self.kind == "intra" else ("cross",)

    @property
    def better(self) -> str:
        """``"lower"`` or ``"higher"``: the direction in which the metric improves."""
        return "lower" if self.worse_when == "higher" else "higher"


def _m(*args, **kw) -> tuple[str, MetricInfo]:
    info = MetricInfo(*args, **kw)
    return info.name, info


# The rigid-rotation catalogue, adopted as is by the "procrustes" family (metrics/families.py); every other
# family declares its metrics where it computes them. After import, METRICS holds every registered metric.
METRICS: dict[str, MetricInfo] = dict(
    [
        _m("procrustes_angle_deg", "intra", "deg",
           "Geodesic angle of the best proper rotation R from a to b, fitted where the data live (the principal subspace of "
           "both stages: directions with at least a tenth of the average variance).",
           "sqrt(sum_planes theta_p^2), R = argmin ||A R - B||_F over rotations of span(U)", "higher"),
        _m("procrustes_max_angle_deg", "intra", "deg", "Largest plane angle of that rotation.", "max_p theta_p", "higher"),
        _m("procrustes_residual_frac", "intra", "fraction",
           "Share of the change not explained by the rigid rotation (0: pure rotation, 1: nothing explained).",
           "||A R - B||^2 / ||A - B||^2", "higher"),
        _m("procrustes_dim", "intra", "count", "Dimension r of the principal subspace the rotation was fitted in.",
           "#{k : lambda_k(M) >= floor * tr(M) / d}, M = (A^T A + B^T B) / 2n", "higher", calibrate=False),
        _m("procrustes_variance_held", "intra", "fraction", "Share of the two stages' variance inside that subspace.",
           "sum_{k <= r} lambda_k(M) / tr(M)", "lower", calibrate=False),
        _m("procrustes_centred_angle_deg", "intra", "deg", "Geodesic Procrustes angle after centring both stages (same rule).",
           "as procrustes_angle_deg on A - mean(A), B - mean(B)", "higher"),
        _m("procrustes_centred_max_angle_deg", "intra", "deg", "Largest plane angle of the centred Procrustes rotation.",
           "max_p theta_p (centred)", "higher"),
        _m("procrustes_centred_residual_frac", "intra", "fraction", "Residual fraction after centring both stages.",
           "||A_c R_c - B_c||^2 / ||A_c - B_c||^2", "higher"),
        _m("procrustes_centred_dim", "intra", "count", "Dimension of the centred fit's principal subspace.",
           "as procrustes_dim on the pooled covariance", "higher", calibrate=False),
        _m("procrustes_centred_variance_held", "intra", "fraction", "Share of the pooled covariance inside the centred subspace.",
           "as procrustes_variance_held on the pooled covariance", "lower", calibrate=False),
        _m("rigid_share", "intra", "fraction",
           "How much of the items' movement the best rigid rotation explains (1: a rotation a d x d matrix can undo; "
           "0: a change of shape).", "1 - sum_i angle(a_i R, b_i)^2 / sum_i angle(a_i, b_i)^2", "lower"),
        _m("rigid_residual_mean_deg", "intra", "deg",
           "Mean angle between each item's rigidly rotated old position and its new one: the movement no rotation explains.",
           "mean_i angle(a_i R, b_i)", "higher"),
        _m("intermodal_rotation_deg", "cross", "deg",
           "Geodesic angle of R_image^T R_text, both fitted in the principal subspace of the two modalities at both stages: "
           "how differently the two modalities rotated.", "sqrt(sum_planes theta_p(R_I^T R_T)^2)", "higher"),
        _m("intermodal_rotation_max_deg", "cross", "deg", "Largest plane angle of R_image^T R_text.", "max_p theta_p(R_I^T R_T)", "higher"),
        _m("intermodal_rotation_dim", "cross", "count", "Dimension of the shared subspace of the inter-modal comparison.",
           "as procrustes_dim on the four pooled clouds", "higher", calibrate=False),
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


# per-item columns of RunAnalysis.items: column -> (kind, unit)
ITEM_COLUMNS: dict[str, tuple[str, str]] = {}  # filled by the families


@dataclass(frozen=True)
class Family:
    """One metric family, declared once: its metrics (with their flags) and what it computes per stage pair.

    ``pair(ctx)`` is called once per stage pair and probe set with a ``PairContext`` (spatial_disorder/analysis.py);
    it reads cached per-stage results (``ctx.sa``, ``ctx.sb``, ``ctx.rotation(m)``, ...) and writes summary values
    with ``ctx.put(modality, metric, value)`` and per-item columns with ``ctx.item(modality, column, values)``.
    ``items`` declares those per-item columns: column -> (kind, unit).
    """

    name: str
    section: str
    metrics: tuple[MetricInfo, ...]
    pair: Callable | None = None
    items: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (replacing one of the same name); its metrics join ``METRICS`` with family and section filled in.

    A metric name may belong to one family only; entries of the catalogue above that no family has claimed yet
    may be adopted.
    """
    if family.section not in SECTIONS:
        raise ValueError(f"family {family.name!r}: section {family.section!r} is not one of {SECTIONS}")
    if family.name in FAMILIES:
        unregister(family.name)
    claimed = []
    for m in family.metrics:
        old = METRICS.get(m.name)
        if old is not None and old.family and old.family != family.name:
            raise ValueError(f"family {family.name!r}: metric {m.name!r} already belongs to family {old.family!r}")
        section = m.section if m.section != "other" else family.section
        claimed.append(replace(m, family=family.name, section=section))
    for m in claimed:
        METRICS[m.name] = m
    ITEM_COLUMNS.update(family.items)
    FAMILIES[family.name] = replace(family, metrics=tuple(claimed))
    return FAMILIES[family.name]


def unregister(name: str) -> None:
    """Remove a family and its metrics (for tests and notebooks that register a toy family)."""
    family = FAMILIES.pop(name, None)
    if family is None:
        return
    for m in family.metrics:
        METRICS.pop(m.name, None)
    for col in family.items:
        ITEM_COLUMNS.pop(col, None)


def flagged(flag: str) -> list[MetricInfo]:
    """Registered metrics with ``flag`` set ("headline", "compare", "gate" or "calibrate"), in registration order."""
    return [m for f in FAMILIES.values() for m in f.metrics if getattr(m, flag)]


def section_metrics(section: str) -> list[str]:
    """Names of the registered metrics shown in a report section, in registration order."""
    return [m.name for f in FAMILIES.values() for m in f.metrics if m.section == section]


from . import families as _families  # noqa: E402,F401  (registers the built-in families)
