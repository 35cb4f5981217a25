"""Read and validate run directories (format v1). Arrays are memory-mapped, never loaded whole."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..atomic import sha256_file
from ..errors import RunFormatError
from ..machine import usable_cores
from .probe import ProbeSet, load_probe
from .schema import MANIFEST, MODALITIES, check_manifest, safe_relpath

_FINITE_BLOCK = 65536
HASH_THREADS = 4  # at most this many files are hashed at once (hashlib works outside the GIL)


@dataclass(frozen=True)
class ArrayEntry:
    path: Path
    shape: tuple[int, int]
    dtype: str
    sha256: str


class Run:
    """A validated run directory: manifest, probe sets, and lazily memory-mapped stage arrays."""

    def __init__(self, path: Path, manifest: dict, probes: dict[str, ProbeSet], arrays: dict):
        self.path = path
        self.manifest = manifest
        self.probes = probes
        self._arrays = arrays

    # --- description ----------------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        return self.manifest.get("metadata", {})

    @property
    def stages(self) -> list[str]:
        """Stage names in order; ``stages[0]`` is the model before continual training."""
        return [s["name"] for s in self.manifest["stages"]]

    @property
    def probe_names(self) -> list[str]:
        return list(self.probes)

    def stage_index(self, stage: int | str) -> int:
        if isinstance(stage, (int, np.integer)):
            if not -len(self.stages) <= stage < len(self.stages):
                raise KeyError(f"stage index {stage} out of range (run has {len(self.stages)} stages)")
            return int(stage) % len(self.stages)
        try:
            return self.stages.index(stage)
        except ValueError:
            raise KeyError(f"no stage {stage!r}; stages are {self.stages}") from None

    def stage_name(self, stage: int | str) -> str:
        return self.stages[self.stage_index(stage)]

    def stage_meta(self, stage: int | str) -> dict:
        """The stage's free metadata (phase, steps, losses, retrieval, timing), or {} when none."""
        entry = self.manifest["stages"][self.stage_index(stage)]
        if not entry.get("meta"):
            return {}
        return _read_json(safe_relpath(self.path, entry["meta"], self.path / MANIFEST))

    # --- arrays ---------------------------------------------------------------------------------
    def array_entry(self, stage: int | str, probe: str, modality: str) -> ArrayEntry:
        if probe not in self.probes:
            raise KeyError(f"no probe set {probe!r}; probe sets are {self.probe_names}")
        if modality not in MODALITIES:
            raise KeyError(f"modality must be one of {MODALITIES}, not {modality!r}")
        return self._arrays[(self.stage_name(stage), probe, modality)]

    def embeddings(self, stage: int | str, probe: str, modality: str) -> np.ndarray:
        """The [n, d] embeddings of one probe set and modality at one stage (read-only memory map)."""
        entry = self.array_entry(stage, probe, modality)
        return _open_npy(entry)

    def validate(self, check_sha256: bool = True, check_finite: bool = False) -> None:
        """Re-check every array: header, shape, dtype, and optionally checksums and finiteness.

        Headers are checked first, then checksums (several files hashed at once, ``check_checksums``), then finiteness;
        each check names the first failing file in manifest order."""
        entries = list(self._arrays.values())
        arrays = [_open_npy(entry) for entry in entries]  # memory maps: the headers are read, no data
        if check_sha256:
            check_checksums([(entry.path, entry.sha256) for entry in entries])
        for entry, arr in zip(entries, arrays) if check_finite else ():
            for start in range(0, arr.shape[0], _FINITE_BLOCK):
                block = np.asarray(arr[start : start + _FINITE_BLOCK])
                bad = ~np.isfinite(block).all(axis=1)
                if bad.any():
                    row = start + int(np.argmax(bad))
                    raise RunFormatError(entry.path, f"row {row} contains NaN or inf ({int(bad.sum())} bad row(s) in this block)")

    # --- display --------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, stages={self.stages}, probes={self.probe_names})"

    @cached_property
    def dimension(self) -> int:
        first = next(iter(self._arrays.values()))
        return first.shape[1]

    def _repr_html_(self) -> str:
        from html import escape

        meta = "".join(
            f"<tr><th style='text-align:left'>{escape(str(k))}</th><td>{escape(str(v))[:200]}</td></tr>"
            for k, v in self.metadata.items()
            if not isinstance(v, (dict, list))
        )
        probes = ", ".join(f"{escape(n)} ({p.n_images} images, {p.n_texts} captions)" for n, p in self.probes.items())
        return (
            f"<div><b>Run</b> <code>{escape(str(self.path))}</code><br>"
            f"<b>stages</b> ({len(self.stages)}): {escape(', '.join(self.stages))}<br>"
            f"<b>probe sets</b>: {probes}<br><b>dimension</b>: {self.dimension}"
            f"<table>{meta}</table></div>"
        )


def open_run(path: str | os.PathLike, check_sha256: bool = True, check_finite: bool = False) -> Run:
    """Open a run directory, validating everything the manifest promises.

    Raises ``RunFormatError`` (one line, naming the file) on the first problem found. Checksums are
    verified by default (streamed, not loaded); ``check_finite`` also scans every row for NaN/inf.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunFormatError(path, "run directory does not exist" if not path.exists() else "not a directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise RunFormatError(manifest_path, "manifest is missing (is this a run directory?)")
    doc = check_manifest(_read_json(manifest_path), manifest_path)

    probes: dict[str, ProbeSet] = {}
    for p in doc["probes"]:
        images = safe_relpath(path, p["images"], manifest_path)
        texts = safe_relpath(path, p["texts"], manifest_path)
        for key, file in (("images", images), ("texts", texts)):
            if not file.is_file():
                raise RunFormatError(file, f"probe table of {p['name']!r} is missing")
            want = p.get("sha256", {}).get(key)
            if check_sha256 and want:
                _check_sha(file, want)
        probe = load_probe(p["name"], images, texts)
        if probe.n_images != p["n_images"] or probe.n_texts != p["n_texts"]:
            raise RunFormatError(
                images,
                f"probe {p['name']!r} has {probe.n_images} images / {probe.n_texts} captions, manifest says {p['n_images']} / {p['n_texts']}",
            )
        probes[p["name"]] = probe

    arrays: dict = {}
    for s in doc["stages"]:
        stage_dir = safe_relpath(path, f"stages/{s['name']}", manifest_path)
        if not stage_dir.is_dir():
            raise RunFormatError(stage_dir, f"stage {s['name']!r} is listed in the manifest but its folder is missing")
        if s.get("meta"):
            meta_path = safe_relpath(path, s["meta"], manifest_path)
            if not meta_path.is_file():
                raise RunFormatError(meta_path, f"metadata of stage {s['name']!r} is missing")
        for probe, mods in s["arrays"].items():
            for mod in MODALITIES:
                e = mods[mod]
                entry = ArrayEntry(safe_relpath(path, e["path"], manifest_path), tuple(e["shape"]), e["dtype"], e["sha256"])
                want_rows = probes[probe].n_rows(mod)
                if entry.shape[0] != want_rows:
                    raise RunFormatError(
                        entry.path,
                        f"{entry.shape[0]} rows in the manifest but probe {probe!r} has {want_rows} {mod} rows",
                    )
                _open_npy(entry)  # header, shape, dtype and size against the manifest
                arrays[(s["name"], probe, mod)] = entry
    run = Run(path, doc, probes, arrays)
    if check_sha256 or check_finite:
        run.validate(check_sha256=check_sha256, check_finite=check_finite)
    return run


def _read_json(path: Path):
    if not path.is_file():
        raise RunFormatError(path, "file is missing")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise RunFormatError(path, f"malformed JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise RunFormatError(path, "not UTF-8 text") from None


def _open_npy(entry: ArrayEntry) -> np.ndarray:
    path = entry.path
    if not path.is_file():
        raise RunFormatError(path, "array file is missing")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)  # header only, no data read
            offset = fh.tell()
    except Exception as exc:
        raise RunFormatError(path, f"not a valid .npy file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if dtype.hasobject:
        raise RunFormatError(path, "array holds Python objects; refusing to load")
    if len(shape) != 2:
        raise RunFormatError(path, f"array has shape {shape}, expected [n, d]")
    if tuple(shape) != tuple(entry.shape):
        raise RunFormatError(path, f"array has shape {list(shape)}, manifest says {list(entry.shape)}")
    if dtype.name != entry.dtype:
        raise RunFormatError(path, f"array dtype is {dtype.name}, manifest says {entry.dtype}")
    if fortran:
        raise RunFormatError(path, "array is stored in Fortran order; expected C order")
    need = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise RunFormatError(path, f"file is truncated ({size} bytes, {need} expected)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


def check_checksums(files: list[tuple[Path, str]], threads: int = HASH_THREADS) -> None:
    """Every (path, expected sha256) pair checked, up to ``threads`` files hashed at once: reading and hashing a
    stage's arrays keeps one core busy for about a second per gigabyte, and a run holds several stages. On a mismatch,
    ``RunFormatError`` names the first failing file in the order given (the same file a one-by-one check names)."""
    if not files:
        return
    workers = max(1, min(threads, len(files), usable_cores()))
    if workers == 1:
        got = [sha256_file(path) for path, _ in files]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="sha256") as pool:
            got = list(pool.map(sha256_file, [path for path, _ in files]))
    for (path, want), digest in zip(files, got):
        if digest != want:
            raise RunFormatError(path, f"checksum mismatch (sha256 {digest[:12]}..., manifest says {want[:12]}...)")


def _check_sha(path: Path, want: str) -> None:
    check_checksums([(path, want)], threads=1)
