"""Moved to :mod:`spatial_disorder.atomic` (one helper for every writer); these names stay importable from here."""

from ..atomic import (  # noqa: F401
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    fsync_file,
    sha256_file,
    write_npy_synced,
    write_synced,
)
