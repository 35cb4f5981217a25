"""Items (one image with its captions) built from a caption table, image loading, and torch datasets."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import DataError
from . import item_ids


@dataclass
class ItemSet:
    """Images of a caption table in first-appearance order, each with its list of captions."""

    ids: list[str]
    images: list[str]
    shards: list[str]
    captions: list[list[str]]

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> ItemSet:
        ids = item_ids(table)
        groups = table.groupby("image_id", sort=False)
        first = groups.first()
        caps = groups["caption"].apply(list)
        return cls(ids, [first.at[i, "image"] for i in ids], [first.at[i, "shard"] for i in ids], [caps[i] for i in ids])

    def __len__(self) -> int:
        return len(self.ids)

    def caption_offsets(self) -> np.ndarray:
        """Start of each item's captions in the flat caption list (length n+1)."""
        return np.concatenate([[0], np.cumsum([len(c) for c in self.captions])]).astype(np.int64)


class ImageLoader:
    """Open images from files or from members of tar shards (tar handles cached per loader, per process)."""

    def __init__(self):
        self._tars: dict[str, tarfile.TarFile] = {}

    def __call__(self, image: str, shard: str = ""):
        from PIL import Image

        try:
            if shard:
                tar = self._tars.get(shard)
                if tar is None:
                    tar = self._tars[shard] = tarfile.open(shard)
                data = tar.extractfile(image).read()
                img = Image.open(io.BytesIO(data))
            else:
                img = Image.open(image)
            return img.convert("RGB")
        except (OSError, KeyError, tarfile.TarError) as exc:
            where = f"{shard}:{image}" if shard else image
            raise DataError(f"{where}: cannot read image ({type(exc).__name__})") from None

    def __getstate__(self):
        return {"_tars": {}}


def epoch_order(n_items: int, batch_size: int, seed: int, phase: int, epoch: int, drop_last: bool) -> list[list[tuple[int, int]]]:
    """The global batches of one epoch: lists of (item index, per-sample seed), a pure function of its arguments.

    The last incomplete batch is dropped when ``drop_last`` and at least one full batch exists.
    """
    rng = np.random.default_rng([seed, phase, epoch, 7])
    perm = rng.permutation(n_items)
    seeds = rng.integers(0, 2**31 - 1, size=n_items)
    batches = [list(zip(perm[i : i + batch_size].tolist(), seeds[i : i + batch_size].tolist())) for i in range(0, n_items, batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class TrainDataset:
    """``dataset[(item, seed)]`` -> (image tensor, tokens, item index, caption index); the seed fixes the caption
    drawn and the augmentation, so a batch is reproducible whatever the worker or the resume point."""

    def __init__(self, items: ItemSet, transform, tokenizer):
        self.items, self.transform, self.tokenizer = items, transform, tokenizer
        self.loader = ImageLoader()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        import torch

        idx, seed = key
        caps = self.items.captions[idx]
        cap = int(np.random.default_rng(seed).integers(len(caps)))
        img = self.loader(self.items.images[idx], self.items.shards[idx])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pixels = self.transform(img)
        tokens = self.tokenizer([caps[cap]])[0]
        return pixels, tokens, idx, cap


class ImageDataset:
    """Eval images of an item set (no augmentation), for embedding probes and teacher caches."""

    def __init__(self, images: list[str], shards: list[str], transform):
        self.images, self.shards, self.transform = images, shards, transform
        self.loader = ImageLoader()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        return self.transform(self.loader(self.images[idx], self.shards[idx]))
