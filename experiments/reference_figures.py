"""The three figures of the reference experiment: retrieval across stages, spatial disorder, stability vs plasticity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.reference import COLOURS, MARKERS, MODE_LABELS, MODES, NEW, OLD
from experiments.stats import t_interval


def _label(mode: str, counts: dict) -> str:
    """Legend label; the number of seeds is added when the modes have different numbers of seeds."""
    return MODE_LABELS[mode] if len(set(counts.values())) <= 1 else f"{MODE_LABELS[mode]} (n={counts[mode]})"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _style(plt):
    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
                         "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 110})


def fig_retrieval(curves: pd.DataFrame, path: Path, n_seeds: int) -> None:
    """R@1 across stages, old and new domain x two directions, mean over seeds with the 95% CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _style(plt)
    counts = curves.groupby("mode")["seed"].nunique().to_dict()
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 7.2), sharex=True)
    panels = [(OLD, "i2t", "old domain (Google style), image → text"), (OLD, "t2i", "old domain (Google style), text → image"),
              (NEW, "i2t", "new domain (Twitter style), image → text"), (NEW, "t2i", "new domain (Twitter style), text → image")]
    for ax, (probe, direction, title) in zip(axes.flat, panels):
        for mode in [m for m in MODES if m in set(curves["mode"])]:
            c = curves[(curves["mode"] == mode) & (curves["probe"] == probe) & (curves["direction"] == direction)]
            stats = [(i, *t_interval(g["value"].tolist())) for i, g in c.groupby("stage_index")]
            if not stats:
                continue
            x = np.array([s[0] for s in stats])
            mean, low, high = (np.array([s[k] for s in stats]) for k in (1, 2, 3))
            ax.plot(x, mean, marker=MARKERS[mode], color=COLOURS[mode], label=_label(mode, counts), lw=2, ms=5)
            for _, one in c.groupby("seed"):  # every seed, thin
                one = one.sort_values("stage_index")
                ax.plot(one["stage_index"], one["value"], color=COLOURS[mode], lw=0.8, alpha=0.45)
            if np.isfinite(low).any() and counts.get(mode, 0) >= 3:
                ax.fill_between(x, np.clip(low, 0, 100), np.clip(high, 0, 100), color=COLOURS[mode], alpha=0.15, lw=0)
        ax.set_title(title)
        ax.set_ylabel("R@1 (%)")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("stage (0: old domain learned; 1-5: new-domain phases)")
        ax.set_xticks(range(0, 6))
    axes[0, 0].legend(loc="lower left", frameon=False)
    fig.suptitle("Retrieval on seen concepts (300 per style) across the continual stages\n"
                 f"thick: mean over {_seeds(n_seeds)}; thin: each seed; bands (3+ seeds): 95% t-interval",
                 fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _bars(ax, rows, metrics, labels, ylabel, title):
    modes = [m for m in MODES if m in set(rows["mode"])]
    width = 0.8 / max(1, len(modes))
    counts = rows.groupby("mode")["seed"].nunique().to_dict()
    for j, mode in enumerate(modes):
        part = rows[rows["mode"] == mode]
        for i, metric in enumerate(metrics):
            mean, low, high, n = t_interval(part[metric].tolist())
            x = i + (j - (len(modes) - 1) / 2) * width
            err = None if not math.isfinite(low) else [[mean - low], [high - mean]]
            ax.bar(x, mean, width * 0.92, color=COLOURS[mode], label=_label(mode, counts) if i == 0 else None,
                   yerr=err, capsize=3, error_kw={"lw": 1.2})
            ax.scatter(np.full(len(part), x), part[metric], s=12, color="black", zorder=3, lw=0)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0, color="black", lw=0.8)
    ax.grid(axis="y", alpha=0.3)


def fig_disorder(rows: pd.DataFrame, path: Path, n_seeds: int) -> None:
    """Spatial disorder of the old-domain probe, stage 0 -> last: rotation, neighbour overlap, paired-angle change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _style(plt)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), gridspec_kw={"width_ratios": [2, 2, 1.2]})
    _bars(axes[0], rows, ["rotation_image_deg", "rotation_text_deg"], ["image", "text"], "mean rotation angle (degrees)",
          "Intra-modal rotation")
    _bars(axes[1], rows, ["knn_overlap_image", "knn_overlap_text"], ["image", "text"], "share of 10 nearest neighbours kept (0-1)",
          "Neighbour overlap (k = 10)")
    axes[1].set_ylim(0, 1)
    _bars(axes[2], rows, ["paired_angle_change_deg"], ["image-caption"], "change of paired angle (degrees)",
          "Inter-modal deviation")
    axes[0].legend(loc="upper right", frameon=False, fontsize=9)
    fig.suptitle(f"Old-domain probe (Google style, 300 seen concepts), stage 0 → last stage; bars: mean over {_seeds(n_seeds)} "
                 "with 95% t-interval, dots: seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def fig_rigid(rows: pd.DataFrame, path: Path, n_seeds: int) -> None:
    """How much of the old items' movement is a rotation: the rigid share, and the movement before and after the
    best rotation (fitted in the principal subspace; docs/metrics.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _style(plt)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 2]})
    _bars(axes[0], rows, ["rigid_share_image", "rigid_share_text"], ["image", "text"],
          "share of the movement the rotation explains (0-1)", "Rigid share")
    axes[0].set_ylim(0, 1)
    _bars(axes[1], rows, ["rotation_image_deg", "rigid_residual_image_deg", "rotation_text_deg", "rigid_residual_text_deg"],
          ["image: moved", "image: left after\nthe best rotation", "text: moved", "text: left after\nthe best rotation"],
          "mean angle per item (degrees)", "Movement before and after the best rotation")
    axes[0].legend(loc="upper right", frameon=False, fontsize=9)
    fig.suptitle(f"Old-domain probe, stage 0 → last stage; bars: mean over {_seeds(n_seeds)}, dots: seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def fig_tradeoff(rows: pd.DataFrame, path: Path) -> None:
    """Final old-domain vs new-domain R@1 (mean of both directions), one point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _style(plt)
    counts = rows.groupby("mode")["seed"].nunique().to_dict()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    stage0_old = rows[["old_r1_i2t_stage0", "old_r1_t2i_stage0"]].mean(axis=1)
    stage0_new = rows[["new_r1_i2t_stage0", "new_r1_t2i_stage0"]].mean(axis=1)
    ax.scatter(stage0_new, stage0_old, marker="*", s=140, color="#555555", label="stage 0 (before new domain)", zorder=3)
    for mode in [m for m in MODES if m in set(rows["mode"])]:
        part = rows[rows["mode"] == mode]
        ax.scatter(part[["new_r1_i2t", "new_r1_t2i"]].mean(axis=1), part[["old_r1_i2t", "old_r1_t2i"]].mean(axis=1),
                   marker=MARKERS[mode], color=COLOURS[mode], s=55, label=_label(mode, counts), zorder=3, edgecolor="white")
    ax.set_xlabel("new-domain R@1 after the last slice (%, mean of i2t and t2i)")
    ax.set_ylabel("old-domain R@1 after the last slice (%, mean of i2t and t2i)")
    ax.set_title("Stability vs plasticity, one point per seed")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
