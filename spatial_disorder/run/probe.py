"""Probe sets: the fixed image and caption tables that are embedded at every stage.

A probe set has two tables so that one image can carry many captions (COCO and Flickr30K have five):

* ``images``: one row per image. Required column ``id`` (unique). Optional ``image_path``, ``domain``
  and any extra columns. Row *i* is row *i* of every stage's ``image.npy``.
* ``texts``: one row per caption. Required ``id`` (unique), ``caption`` and ``image_id`` (the ``id`` of the
  image the caption describes). Row *j* is row *j* of every stage's ``text.npy``.

``text_to_image[j]`` is the image row of caption *j*; retrieval counts a hit on any caption of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RunFormatError
from .schema import NAME_RULE, valid_name

IMAGE_COLUMNS = ("id",)
TEXT_COLUMNS = ("id", "caption", "image_id")


def check_name(name: str, what: str = "probe") -> str:
    if not valid_name(name):
        raise ValueError(f"invalid {what} name {name!r}: use {NAME_RULE}")
    return name


@dataclass
class ProbeSet:
    """A fixed set of probe items: images, captions, and which caption belongs to which image."""

    name: str
    images: pd.DataFrame
    texts: pd.DataFrame
    text_to_image: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        check_name(self.name)
        self.images = self.images.reset_index(drop=True)
        self.texts = self.texts.reset_index(drop=True)
        self.text_to_image = _link(self.images, self.texts, None, None)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def from_pairs(
        cls,
        name: str,
        captions: Sequence[str],
        ids: Sequence | None = None,
        image_paths: Sequence[str] | None = None,
        domain: str | Sequence[str] | None = None,
        **extra_columns: Sequence,
    ) -> ProbeSet:
        """One caption per image (the common case for a custom model's probe items)."""
        n = len(captions)
        ids = [str(i) for i in (range(n) if ids is None else ids)]
        images = pd.DataFrame({"id": ids})
        if image_paths is not None:
            images["image_path"] = list(image_paths)
        if domain is not None:
            images["domain"] = [domain] * n if isinstance(domain, str) else list(domain)
        for key, values in extra_columns.items():
            images[key] = list(values)
        texts = pd.DataFrame({"id": [f"{i}#0" for i in ids], "caption": list(captions), "image_id": ids})
        return cls(name, images, texts)

    @classmethod
    def from_captions(
        cls, name: str, images: pd.DataFrame, captions: Sequence[Sequence[str]]
    ) -> ProbeSet:
        """Many captions per image: ``captions[i]`` lists the captions of ``images.iloc[i]``."""
        images = images.reset_index(drop=True)
        if len(captions) != len(images):
            raise ValueError(f"captions has {len(captions)} lists for {len(images)} images")
        rows = [
            (f"{img_id}#{k}", cap, img_id)
            for img_id, caps in zip(images["id"].astype(str), captions)
            for k, cap in enumerate(caps)
        ]
        texts = pd.DataFrame(rows, columns=["id", "caption", "image_id"])
        return cls(name, images, texts)

    # --- views --------------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_texts(self) -> int:
        return len(self.texts)

    def n_rows(self, modality: str) -> int:
        return self.n_images if modality == "image" else self.n_texts

    def table(self, modality: str) -> pd.DataFrame:
        return self.images if modality == "image" else self.texts

    def image_to_texts(self) -> list[np.ndarray]:
        """For every image row, the text rows of its captions."""
        order = np.argsort(self.text_to_image, kind="stable")
        bounds = np.searchsorted(self.text_to_image[order], np.arange(self.n_images + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(self.n_images)]

    def _repr_html_(self) -> str:
        from html import escape

        head = self.texts.head(5).merge(self.images, left_on="image_id", right_on="id", suffixes=("", "_image"))
        return (
            f"<b>ProbeSet {escape(self.name)}</b>: {self.n_images} images, {self.n_texts} captions"
            + head[["image_id", "caption"]].to_html(index=False, escape=True)
        )


def _link(images: pd.DataFrame, texts: pd.DataFrame, src_i: Path | None, src_t: Path | None) -> np.ndarray:
    """Validate the two tables and return ``text_to_image`` (errors name the source files, if any)."""
    for cols, frame, src, label in ((IMAGE_COLUMNS, images, src_i, "images"), (TEXT_COLUMNS, texts, src_t, "texts")):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise RunFormatError(src, f"{label} table lacks required column(s) {missing}")
    image_ids = images["id"].astype(str)
    if image_ids.duplicated().any():
        dup = image_ids[image_ids.duplicated()].iloc[0]
        raise RunFormatError(src_i, f"duplicate image id {dup!r}")
    text_ids = texts["id"].astype(str)
    if text_ids.duplicated().any():
        dup = text_ids[text_ids.duplicated()].iloc[0]
        raise RunFormatError(src_t, f"duplicate text id {dup!r}")
    if len(images) == 0:
        raise RunFormatError(src_i, "probe set has no images")
    lookup = pd.Index(image_ids)
    t2i = lookup.get_indexer(texts["image_id"].astype(str))
    if (t2i < 0).any():
        bad = texts["image_id"].astype(str)[t2i < 0].iloc[0]
        raise RunFormatError(src_t, f"caption refers to unknown image_id {bad!r}")
    counts = np.bincount(t2i, minlength=len(images))
    if (counts == 0).any():
        bad = image_ids.iloc[int(np.argmin(counts))]
        raise RunFormatError(src_t, f"image {bad!r} has no caption (every image needs at least one)")
    return t2i.astype(np.int64)


def read_table(path: Path) -> pd.DataFrame:
    """Read a probe table (CSV or Parquet) with ids and captions kept as text, never as NaN."""
    if not path.is_file():
        raise RunFormatError(path, "probe table is missing")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={"id": str, "image_id": str, "caption": str}, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for bad files
        raise RunFormatError(path, f"cannot read table ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return frame


def load_probe(name: str, images_path: Path, texts_path: Path) -> ProbeSet:
    """Read and validate a probe set from its two table files."""
    images = read_table(images_path)
    texts = read_table(texts_path)
    probe = ProbeSet.__new__(ProbeSet)
    probe.name, probe.images, probe.texts = name, images, texts
    probe.text_to_image = _link(images, texts, images_path, texts_path)
    return probe
