"""Data adapters: every format becomes one caption table (one row per caption).

Columns of a caption table: ``image_id`` (str, groups the captions of one image), ``image`` (file path,
or the member name inside ``shard`` for webdataset tars), ``shard`` (tar path or ""), ``caption``, plus any
extra columns of the source (``split``, ``style``, ``category``, ...) usable in ``where`` filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..errors import ConfigError, DataError

TABLE_COLUMNS = ("image_id", "image", "shard", "caption")


def load_source(name: str, spec: Mapping[str, Any]) -> pd.DataFrame:
    """Read one dataset spec (``format``, ``path`` and format options) into a caption table."""
    fmt = spec.get("format")
    if fmt in ("csv", "tsv"):
        from .csv_table import read_csv_table

        table = read_csv_table(spec, default_sep="\t" if fmt == "tsv" else ",")
    elif fmt == "coco":
        from .coco import read_coco

        table = read_coco(spec)
    elif fmt == "karpathy":
        from .karpathy import read_karpathy

        table = read_karpathy(spec)
    elif fmt == "wds":
        from .wds import read_wds

        table = read_wds(spec)
    else:
        raise ConfigError(f"datasets.{name}: unknown format {fmt!r}")
    if len(table) == 0:
        raise DataError(f"{spec['path']}: dataset {name!r} has no captions")
    return finish_table(table)


def finish_table(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    if "shard" not in table.columns:
        table["shard"] = ""
    for col in TABLE_COLUMNS:
        table[col] = table[col].astype(str)
    return table.reset_index(drop=True)


def filter_rows(table: pd.DataFrame, where: Mapping[str, Any] | None, what: str = "filter") -> pd.DataFrame:
    """Keep rows whose columns equal the given values (a list means any of them). Values compare as text."""
    if not where:
        return table
    mask = pd.Series(True, index=table.index)
    for col, value in where.items():
        if col not in table.columns:
            raise ConfigError(f"{what}: no column {col!r} (columns: {', '.join(map(str, table.columns))})")
        values = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        mask &= table[col].astype(str).isin(values)
    out = table[mask]
    if len(out) == 0:
        raise ConfigError(f"{what}: no rows match {dict(where)}")
    return out.reset_index(drop=True)


def item_ids(table: pd.DataFrame) -> list[str]:
    """Distinct image ids in order of first appearance."""
    return list(pd.unique(table["image_id"]))
