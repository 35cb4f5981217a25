"""Colour-blind-safe palette (Okabe-Ito) and the matplotlib style every report figure uses."""

from __future__ import annotations

from contextlib import contextmanager

OKABE_ITO = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "black": "#000000",
}
# Fixed colours per modality so a reader learns them once: image blue, text vermillion, cross green.
MODALITY_COLORS = {"image": OKABE_ITO["blue"], "text": OKABE_ITO["vermillion"], "cross": OKABE_ITO["green"]}
CYCLE = [OKABE_ITO[k] for k in ("blue", "vermillion", "green", "orange", "purple", "sky_blue", "yellow", "black")]
SEQUENTIAL_CMAP = "viridis"  # perceptually uniform and readable in grey scale

RC = {
    "figure.dpi": 100,
    "figure.autolayout": False,  # report figures set their own margins (figures.py): no layout engine, one draw per save
    "figure.constrained_layout.use": False,
    "savefig.dpi": 110,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titley": 1.0,  # a fixed title height: matplotlib otherwise measures every tick label to place each title
    "axes.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "svg.fonttype": "none",  # keep text as text in SVG (searchable, small)
    "svg.hashsalt": "spatial-disorder",  # deterministic SVG ids
}


def color_cycle(n: int) -> list[str]:
    """``n`` distinguishable colours (the Okabe-Ito cycle, repeated when ``n`` exceeds it)."""
    return [CYCLE[i % len(CYCLE)] for i in range(n)]


@contextmanager
def report_style():
    """Matplotlib settings for report figures, restored afterwards (no global state leaks)."""
    import matplotlib
    from cycler import cycler

    with matplotlib.rc_context({**RC, "axes.prop_cycle": cycler(color=CYCLE)}):
        yield
