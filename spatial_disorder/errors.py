"""Exceptions with one-line messages that name the offending file."""

from __future__ import annotations

import os


class SpatialDisorderError(Exception):
    """Base class for every error this package raises on purpose."""


class RunFormatError(SpatialDisorderError):
    """A run directory (or one file in it) breaks the run-format contract.

    ``str(err)`` is one line: ``<path>: <problem>``, ready to print to a terminal.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(SpatialDisorderError, ValueError):
    """Arrays or options handed to an analyzer are unusable (NaN rows, bad shapes, k too large...)."""
