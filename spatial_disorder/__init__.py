"""spatial_disorder: measure how a continually trained vision-language model's embedding space moves.

Importing this package never imports torch, open_clip or ``modx``: a drift check in CI needs only numpy,
scipy, pandas and matplotlib (faiss optional).
"""

from ._version import __version__
from .errors import InputError, RunFormatError, SpatialDisorderError
from .run import FORMAT_VERSION, ProbeSet, Run, RunWriter, open_run, write_run

__all__ = [
    "FORMAT_VERSION",
    "InputError",
    "ProbeSet",
    "Run",
    "RunFormatError",
    "RunWriter",
    "SpatialDisorderError",
    "__version__",
    "open_run",
    "write_run",
]
