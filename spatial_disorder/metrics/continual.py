"""Continual-learning summaries of a stage x probe score table: forgetting (two definitions), backward
transfer (negative = forgetting) and the Transfer / Avg / Last table.

Notation: ``acc[t, j]`` is the score (e.g. R@1, percent) on probe ``j`` after stage ``t``; stage 0 is the
model before continual training and ``T`` the last stage. ``learned_at[j]`` is the stage whose training
data is probe ``j``'s task; probes missing from it are held-out sets never trained on (learned at stage 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError

QUANTITIES = ("first", "best", "last", "forgetting_max", "forgetting_first", "bwt", "transfer", "avg")


def continual_table(acc: pd.DataFrame, learned_at: dict[str, int] | None = None) -> pd.DataFrame:
    """From ``acc`` (index: stages in order, columns: probes) return a tidy [probe, quantity, value] frame.

    * ``forgetting_max`` = max_{t < T} acc[t, j] - acc[T, j] (best-so-far minus last; >= 0)
    * ``forgetting_first`` = acc[0, j] - acc[T, j] (first minus last; positive = forgotten)
    * ``bwt`` = acc[T, j] - acc[l_j, j] with l_j = learned_at[j] (standard sign: negative = forgetting);
      the row with probe ``"all"`` averages it over probes with l_j < T (Lopez-Paz and Ranzato, 2017)
    * ``transfer`` = mean_{t < l_j} acc[t, j] (zero-shot before the probe's task is learned; NaN when l_j = 0),
      ``avg`` = mean_t acc[t, j], ``last`` = acc[T, j]
    """
    if acc.shape[0] < 1 or acc.shape[1] < 1:
        raise InputError("continual table needs at least one stage and one probe")
    learned_at = dict(learned_at or {})
    unknown = set(learned_at) - set(acc.columns)
    if unknown:
        raise InputError(f"learned_at names unknown probe(s) {sorted(unknown)}")
    T = acc.shape[0] - 1
    rows = []
    bwts = []
    for probe in acc.columns:
        v = acc[probe].to_numpy(dtype=np.float64)
        lj = int(learned_at.get(probe, 0))
        if not 0 <= lj <= T:
            raise InputError(f"learned_at[{probe!r}] = {lj} is not a stage index 0..{T}")
        bwt = v[T] - v[lj]
        if lj < T:
            bwts.append(bwt)
        values = {
            "first": v[0],
            "best": np.nanmax(v),
            "last": v[T],
            "forgetting_max": (np.nanmax(v[:T]) - v[T]) if T > 0 else 0.0,
            "forgetting_first": v[0] - v[T],
            "bwt": bwt,
            "transfer": float(np.mean(v[:lj])) if lj > 0 else np.nan,
            "avg": float(np.mean(v)),
        }
        rows += [(probe, q, float(values[q])) for q in QUANTITIES]
    rows.append(("all", "bwt", float(np.mean(bwts)) if bwts else np.nan))
    return pd.DataFrame(rows, columns=["probe", "quantity", "value"])


def continual_from_retrieval(retrieval: pd.DataFrame, stages: list[str], learned_at: dict[str, int] | None = None) -> pd.DataFrame:
    """Apply ``continual_table`` to every (direction, metric) of a tidy retrieval frame.

    Returns [direction, metric, probe, quantity, value]. For rank metrics (medr, meanr) lower is better,
    so forgetting there is negative when ranks get worse; read them with that sign in mind.
    """
    out = []
    for (direction, metric), part in retrieval.groupby(["direction", "metric"], sort=False):
        acc = part.pivot(index="stage", columns="probe", values="value").reindex([s for s in stages if s in set(part["stage"])])
        table = continual_table(acc, learned_at)
        table.insert(0, "metric", metric)
        table.insert(0, "direction", direction)
        out.append(table)
    if not out:
        return pd.DataFrame(columns=["direction", "metric", "probe", "quantity", "value"])
    return pd.concat(out, ignore_index=True)
