"""Items whose top-1 retrieval hit flipped between two stages, joined to their captions."""

from __future__ import annotations

import numpy as np
import pandas as pd


def flipped_items(run, probe: str, stage_a, stage_b, backend=None) -> pd.DataFrame:
    """Every caption (text->image) and image (image->text) whose rank-1 hit was lost or gained from a to b.

    Columns: direction, change ("lost"/"gained"), row, id, caption, rank_a, rank_b. For image->text rows the
    caption shown is the image's first caption.
    """
    from ..metrics.retrieval import retrieval_ranks

    p = run.probes[probe]
    ranks = []
    for stage in (stage_a, stage_b):
        img = np.asarray(run.embeddings(stage, probe, "image"), dtype=np.float32)
        txt = np.asarray(run.embeddings(stage, probe, "text"), dtype=np.float32)
        ranks.append(retrieval_ranks(img, txt, p.text_to_image, backend=backend))
    first_caption = {}
    for j, i in enumerate(p.text_to_image):
        first_caption.setdefault(int(i), j)
    captions = p.texts["caption"].astype(str).to_numpy()
    frames = []
    for direction, ids in (("t2i", p.texts["id"].astype(str).to_numpy()), ("i2t", p.images["id"].astype(str).to_numpy())):
        ra, rb = getattr(ranks[0], direction), getattr(ranks[1], direction)
        for change, mask in (("lost", (ra == 1) & (rb != 1)), ("gained", (ra != 1) & (rb == 1))):
            rows = np.flatnonzero(mask)
            if direction == "t2i":
                caps = captions[rows]
            else:
                caps = captions[[first_caption[int(r)] for r in rows]] if len(rows) else np.array([], dtype=str)
            frames.append(
                pd.DataFrame(
                    {"direction": direction, "change": change, "row": rows, "id": ids[rows], "caption": caps, "rank_a": ra[rows], "rank_b": rb[rows]}
                )
            )
    out = pd.concat(frames, ignore_index=True)
    return out.astype({"rank_a": float, "rank_b": float})
