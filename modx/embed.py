"""Embed probe sets (both towers, eval mode, no augmentation) and score retrieval on them."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .data.items import ImageDataset, ItemSet


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA (unless fp32 is forced); plain fp32 on CPU."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PreparedItems:
    """The eval inputs of a fixed item set (probe set), decoded and tokenised once, reused at every stage.

    Probe sets are embedded after stage 0 and every phase with the same eval transform, so decoding and
    resizing their images again each time is wasted work. Pixels are kept in memory only while they fit in
    ``max_pixel_bytes`` (default 512 MiB: 3,000 images at 224 px); larger sets stream from disk as before.
    """

    def __init__(self, items: ItemSet, transform, tokenizer, batch_size: int = 256, max_pixel_bytes: int = 512 << 20):
        self.items = items
        self.captions = [c for caps in items.captions for c in caps]
        self.tokens = torch.cat([tokenizer(self.captions[i : i + batch_size]) for i in range(0, len(self.captions), batch_size)])
        self.dataset = ImageDataset(items.images, items.shards, transform)
        self.pixels = None
        if len(self.dataset):
            first = self.dataset[0]
            if first.numel() * first.element_size() * len(self.dataset) <= max_pixel_bytes:
                self.pixels = torch.stack([first] + [self.dataset[i] for i in range(1, len(self.dataset))])

    def image_batches(self, batch_size: int, num_workers: int = 0):
        if self.pixels is not None:
            yield from self.pixels.split(batch_size)
        else:
            yield from torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, num_workers=num_workers)


def _unit(arr: np.ndarray) -> np.ndarray:
    """Renormalise in fp32 (bf16 outputs are only approximately unit length)."""
    return (arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@torch.no_grad()
def _encode(model, batches, encode, device, precision) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        out = []
        for batch in batches:
            with autocast(device, precision):
                out.append(encode(batch.to(device), normalize=True).float().cpu())
    finally:
        model.train(was_training)
    return _unit(torch.cat(out).numpy())


def text_encoder(model):
    """``encode(tokens, normalize)`` for the text tower, dropping trailing padding columns where that is exact.

    For open_clip's own ``CLIP`` text tower (causal attention mask, pooling at the end-of-text token), the
    features of a caption do not depend on the padding after it, so a batch can be cut to its longest
    caption: probe captions of about 10 tokens then cost a third of a 32-token (or a seventh of a 77-token)
    context. Any other tower (custom or Hugging Face text models) runs ``model.encode_text`` unchanged.
    """
    from open_clip.model import CLIP
    from open_clip.transformer import text_global_pool

    mask = getattr(model, "attn_mask", None)
    causal = False
    if mask is not None and mask.dim() == 2:
        above = torch.ones_like(mask, dtype=torch.bool).triu(diagonal=1)
        causal = bool((mask[above] == float("-inf")).all() and (mask[~above] == 0).all())
    if not (isinstance(model, CLIP) and causal and model.text_pool_type in ("argmax", "eos")):
        return model.encode_text

    def encode(tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        used = (tokens != 0).any(dim=0).nonzero()
        length = int(used.max()) + 1 if len(used) else tokens.shape[1]
        if length >= tokens.shape[1]:
            return model.encode_text(tokens, normalize=normalize)
        tokens = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x

    return encode


def embed_items(model, items: ItemSet | PreparedItems, transform, tokenizer, device, precision="auto", batch_size=256,
                num_workers=0) -> dict[str, np.ndarray]:
    """L2-normalised float32 embeddings: ``image`` [n_images, d] and ``text`` [n_captions, d] (captions flattened in order).

    ``items`` may be a :class:`PreparedItems` (inputs computed once); ``transform``/``tokenizer`` are then unused.
    """
    prepared = items if isinstance(items, PreparedItems) else PreparedItems(items, transform, tokenizer, batch_size, max_pixel_bytes=0)
    return {
        "image": _encode(model, prepared.image_batches(batch_size, num_workers), model.encode_image, device, precision),
        "text": _encode(model, prepared.tokens.split(batch_size), text_encoder(model), device, precision),
    }


def embed_probe_sets(model, prepared: dict[str, PreparedItems], device, precision="auto", batch_size=256) -> dict[str, dict[str, np.ndarray]]:
    """Embed several probe sets at once, encoding every distinct caption only once.

    Probe sets often share captions (the same concepts drawn in two styles; the same caption under two
    images); the text tower then runs once per distinct caption and the rows are copied back, which gives
    the arrays ``embed_items`` gives probe set by probe set (up to float rounding of other batchings).
    """
    distinct: dict[str, torch.Tensor] = {}  # caption -> its tokens, in first-seen order
    for p in prepared.values():
        for caption, tokens in zip(p.captions, p.tokens):
            distinct.setdefault(caption, tokens)
    index = {caption: i for i, caption in enumerate(distinct)}
    rows = {name: np.array([index[c] for c in p.captions], dtype=np.int64) for name, p in prepared.items()}
    tokens = torch.stack(list(distinct.values())) if distinct else torch.empty((0, 1), dtype=torch.long)
    by_length = torch.argsort((tokens != 0).sum(dim=1), stable=True)  # similar lengths share a batch: less padding
    text = np.empty((len(tokens), 0), dtype=np.float32)
    if len(tokens):
        encoded = _encode(model, tokens[by_length].split(batch_size), text_encoder(model), device, precision)
        text = np.empty_like(encoded)
        text[by_length.numpy()] = encoded
    return {
        name: {"image": _encode(model, p.image_batches(batch_size), model.encode_image, device, precision), "text": text[rows[name]]}
        for name, p in prepared.items()
    }


def retrieval(image: np.ndarray, text: np.ndarray, text_to_image: np.ndarray) -> dict[str, float]:
    """Retrieval scores (R@K in percent, ranks) computed by ``spatial_disorder.metrics.retrieval``."""
    from spatial_disorder.metrics.retrieval import retrieval_scores

    return {k: float(v) for k, v in retrieval_scores(image, text, text_to_image).items()}
