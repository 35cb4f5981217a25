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


@torch.no_grad()
def embed_items(model, items: ItemSet, transform, tokenizer, device, precision="auto", batch_size=256, num_workers=0) -> dict[str, np.ndarray]:
    """L2-normalised float32 embeddings: ``image`` [n_images, d] and ``text`` [n_captions, d] (captions flattened in order)."""
    was_training = model.training
    model.eval()
    try:
        loader = torch.utils.data.DataLoader(
            ImageDataset(items.images, items.shards, transform), batch_size=batch_size, num_workers=num_workers
        )
        images = []
        for pixels in loader:
            with autocast(device, precision):
                images.append(model.encode_image(pixels.to(device), normalize=True).float().cpu())
        captions = [c for caps in items.captions for c in caps]
        texts = []
        for i in range(0, len(captions), batch_size):
            tokens = tokenizer(captions[i : i + batch_size]).to(device)
            with autocast(device, precision):
                texts.append(model.encode_text(tokens, normalize=True).float().cpu())
    finally:
        model.train(was_training)
    out = {"image": torch.cat(images).numpy(), "text": torch.cat(texts).numpy()}
    for key, arr in out.items():  # renormalise in fp32 (bf16 outputs are only approximately unit length)
        out[key] = (arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return out


def retrieval(image: np.ndarray, text: np.ndarray, text_to_image: np.ndarray) -> dict[str, float]:
    """Retrieval scores (R@K in percent, ranks) computed by ``spatial_disorder.metrics.retrieval``."""
    from spatial_disorder.metrics.retrieval import retrieval_scores

    return {k: float(v) for k, v in retrieval_scores(image, text, text_to_image).items()}
