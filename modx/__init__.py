"""modx: continual CLIP training on open_clip (fine-tuning, Mod-X, joint) that writes spatial_disorder runs.

Importing ``modx`` is cheap: torch and open_clip are imported only by the modules that need them
(``modx.runner``, ``modx.models``, ``modx.losses``, ...).
"""

__version__ = "0.1.0"
