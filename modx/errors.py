"""Errors the trainer raises on purpose; ``str(err)`` is one line for the CLI to print."""

from __future__ import annotations


class TrainError(Exception):
    """Base class: a problem the user can fix (bad config, bad data file, diverged loss)."""


class ConfigError(TrainError, ValueError):
    """The configuration is invalid (unknown key, wrong type, missing dataset)."""


class DataError(TrainError, ValueError):
    """A dataset file is missing or malformed; the message names the file."""


class DivergedError(TrainError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class InterruptedRun(TrainError):
    """Training was interrupted (Ctrl-C); the message says what was saved and how to continue."""
