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

SECTIONS = ("retrieval", "rotation", "topology", "neighbours", "intermodal", "upgrade", "other")


@dataclass(frozen=True)
class MetricInfo:
    """One summary metric. The flags say where it is used: ``headline`` (terminal and overview table, in
    registration order), ``compare`` (the ``sd-analyze compare`` figures), ``gate`` (may be named in a thresholds
    file) and ``calibrate`` (``check --calibrate`` proposes a threshold; off for bookkeeping values). ``bounds``: the
    smallest and largest value the metric can take, where its unit alone does not say (``value_range``)."""

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
    bounds: tuple[float, float] | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text") if self.kind == "intra" else ("cross",)

    @property
    def better(self) -> str:
        """``"lower"`` or ``"higher"``: the direction in which the metric improves."""
        return "lower" if self.worse_when == "higher" else "higher"


# Every registered metric (filled by ``register``; the built-in families live in metrics/families.py).
METRICS: dict[str, MetricInfo] = {}

# The ends a value of each unit can reach; a metric whose values reach further (or less far) declares ``bounds``.
_UNIT_RANGES = {"deg": (0.0, 180.0), "fraction": (0.0, 1.0), "count": (0.0, math.inf), "nats": (0.0, math.inf),
                "percent points": (-100.0, 100.0), "distance": (0.0, math.inf), "percent": (0.0, 100.0), "0/1": (0.0, 1.0),
                "ratio": (0.0, math.inf)}


def value_range(name: str) -> tuple[float, float]:
    """The smallest and largest value a metric can take (inclusive); (-inf, inf) when unknown.

    The metric's own ``bounds`` when it declares them (geodesic norms over rotation planes, gaps between unit vectors),
    else its unit's: angles of one item or one plane lie in [0, 180] degrees, signed changes of them in [-180, 180].
    A threshold at or beyond an end can never be violated.
    """
    info = METRICS.get(name)
    if info is None:
        return -math.inf, math.inf
    if info.bounds is not None:
        return info.bounds
    lo, hi = _UNIT_RANGES.get(info.unit, (-math.inf, math.inf))
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
    ``items`` declares those per-item columns: column -> (kind, unit). ``run(engine, ref, last)``, when given, is
    called once per analysis after every pair and returns run-level tables ({RunAnalysis field: DataFrame}) for the
    reference stage ``ref`` against the last stage ``last`` (the bridge family's learning curve).
    """

    name: str
    section: str
    metrics: tuple[MetricInfo, ...]
    pair: Callable | None = None
    items: dict = field(default_factory=dict)
    run: Callable | None = None


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (replacing one of the same name); its metrics join ``METRICS`` with family and section filled in.

    A metric name may belong to one family only.
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


from . import bridge_family as _bridge_family  # noqa: E402,F401  (upgrade without re-indexing)
from . import families as _families  # noqa: E402,F401  (registers the built-in families)
