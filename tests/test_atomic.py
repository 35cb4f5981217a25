"""One atomic-write helper (``spatial_disorder.atomic``) for every writer of both packages."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from spatial_disorder import atomic

ROOT = Path(__file__).resolve().parents[1]


def test_no_writer_hand_rolls_fsync_or_temp_files():
    offenders = []
    for folder in ("spatial_disorder", "modx", "experiments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "spatial_disorder/atomic.py":
                continue
            text = path.read_text(encoding="utf-8")
            if re.search(r"os\.fsync\(|mkstemp\(|NamedTemporaryFile\(", text):
                offenders.append(rel)
    assert offenders == []


def test_old_module_path_is_the_same_helper():
    from spatial_disorder.run import atomic as old

    for name in ("atomic_write", "atomic_write_bytes", "atomic_write_json", "fsync_dir", "sha256_file", "write_npy_synced"):
        assert getattr(old, name) is getattr(atomic, name)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_helper_files_keep_the_umask(tmp_path, umask_022):
    atomic.atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic.write_synced(tmp_path / "b.bin", b"y")
    atomic.atomic_write_json(tmp_path / "c.json", {"k": 1})
    for name in ("a.bin", "b.bin", "c.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "c.json"]  # no temporary left


def test_checkpoints_keep_the_umask(tmp_path, umask_022):
    torch = pytest.importorskip("torch")
    from modx import checkpoint

    checkpoint.save_atomic({"w": torch.ones(2)}, tmp_path / "ck" / "a.pt")
    assert stat.S_IMODE((tmp_path / "ck" / "a.pt").stat().st_mode) == 0o644
    assert torch.equal(checkpoint.load(tmp_path / "ck" / "a.pt")["w"], torch.ones(2))
