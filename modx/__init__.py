"""modx: continual CLIP training on open_clip (fine-tuning, Mod-X, joint) that writes spatial_disorder runs."""

__version__ = "0.1.0"
