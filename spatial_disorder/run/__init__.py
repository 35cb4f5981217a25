"""Run format v1: the on-disk contract between the trainer and the analyzers (see docs/run-format.md)."""

from .probe import ProbeSet
from .reader import Run, open_run
from .schema import FORMAT_NAME, FORMAT_VERSION, MODALITIES, json_schema
from .writer import RunWriter, write_run

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MODALITIES", "ProbeSet", "Run", "RunWriter", "json_schema", "open_run", "write_run"]
