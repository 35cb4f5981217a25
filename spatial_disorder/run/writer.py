"""Write run directories (format v1): probe sets first, then one stage at a time, each atomically.

Every stage is written into a hidden temporary folder, fsynced, renamed into place, and only then is the
manifest replaced (itself atomically). A crash at any moment leaves the previous complete run readable;
a stage folder that is not in the manifest is an orphan and is removed by the next writer.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._version import __version__
from ..atomic import atomic_write_json, fsync_dir, fsync_file, sha256_file, write_npy_synced
from ..errors import RunFormatError
from ..jsonutil import clean
from .probe import ProbeSet, check_name
from .schema import FORMAT_NAME, FORMAT_VERSION, MANIFEST, MODALITIES, check_manifest

StageArrays = Mapping[str, Mapping[str, np.ndarray]]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _plain_json(obj):
    """Metadata as plain JSON values (numpy scalars and arrays unwrapped, paths as text); NaN, inf and objects with no
    JSON form are refused, so that the manifest reads back as written."""
    return clean(obj, strict=True)


class RunWriter:
    """Create a run, declare its probe sets, and append stages.

    >>> w = RunWriter.create("runs/demo", metadata={"model": "my-model", "mode": "finetune", "seed": 0})
    >>> w.add_probe(ProbeSet.from_pairs("val", captions=["a cat", "a dog"]))
    >>> w.write_stage("stage0", {"val": {"image": img0, "text": txt0}})
    """

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self._manifest = manifest
        self._probes: dict[str, tuple[int, int]] = {
            p["name"]: (p["n_images"], p["n_texts"]) for p in manifest["probes"]
        }

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, metadata: Mapping | None = None, overwrite: bool = False) -> RunWriter:
        """Start a new, empty run directory (refuses to replace an existing run unless ``overwrite``)."""
        path = Path(path)
        plain = _plain_json(dict(metadata or {}))  # refused before anything on disk changes
        if (path / MANIFEST).exists():
            if not overwrite:
                raise RunFormatError(path / MANIFEST, "a run already exists here (open it to append, or pass overwrite=True)")
            shutil.rmtree(path)
        elif path.exists() and any(path.iterdir()):
            raise RunFormatError(path, "directory exists and is not empty; refusing to write a run into it")
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": _now(),
            "tool": {"name": "spatial-disorder", "version": __version__},
            "metadata": plain,
            "probes": [],
            "stages": [],
        }
        atomic_write_json(path / MANIFEST, manifest)
        fsync_dir(path.parent)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunWriter:
        """Open an existing run to append stages (the run is validated first)."""
        from .reader import open_run

        run = open_run(path, check_sha256=False)
        writer = cls(run.path, run.manifest)
        writer._remove_orphans()
        return writer

    # --- state ----------------------------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        return [s["name"] for s in self._manifest["stages"]]

    @property
    def probe_names(self) -> list[str]:
        return list(self._probes)

    def update_metadata(self, **values) -> None:
        """Merge keys into the run's free metadata (manifest rewritten atomically)."""
        self._manifest["metadata"].update(_plain_json(values))
        self._commit_manifest()

    # --- writing --------------------------------------------------------------------------------
    def add_probe(self, probe: ProbeSet, table_format: str = "csv") -> None:
        """Declare a probe set and store its tables. Probe sets are fixed before the first stage."""
        check_name(probe.name)
        if self._manifest["stages"]:
            raise RunFormatError(self.path / MANIFEST, f"cannot add probe {probe.name!r}: stages already written (probe sets are fixed before training)")
        if probe.name in self._probes:
            raise RunFormatError(self.path / MANIFEST, f"probe {probe.name!r} already exists")
        if table_format not in ("csv", "parquet"):
            raise ValueError("table_format must be 'csv' or 'parquet'")
        final = self.path / "probes" / probe.name
        tmp = self._tmpdir(final.parent)
        try:
            files = {}
            for key, frame in (("images", probe.images), ("texts", probe.texts)):
                target = tmp / f"{key}.{table_format}"
                if table_format == "csv":
                    frame.to_csv(target, index=False)
                else:
                    frame.to_parquet(target, index=False)
                fsync_file(target)
                files[key] = target.name
            sums = {key: sha256_file(tmp / name) for key, name in files.items()}
            self._move_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        rel = f"probes/{probe.name}"
        self._manifest["probes"].append(
            {
                "name": probe.name,
                "images": f"{rel}/{files['images']}",
                "texts": f"{rel}/{files['texts']}",
                "n_images": probe.n_images,
                "n_texts": probe.n_texts,
                "sha256": sums,
            }
        )
        self._probes[probe.name] = (probe.n_images, probe.n_texts)
        self._commit_manifest()

    def write_stage(
        self,
        name: str,
        embeddings: StageArrays,
        meta: Mapping | None = None,
        dtype: str | None = None,
    ) -> None:
        """Append one stage: ``embeddings[probe]["image" | "text"]`` is an [n, d] float array per probe set.

        ``dtype`` forces ``float16`` or ``float32`` on disk; by default float16 stays float16 and
        everything else is stored as float32. Rows must be finite and aligned with the probe tables.
        """
        check_name(name, "stage")
        if not self._probes:
            raise RunFormatError(self.path / MANIFEST, "declare at least one probe set (add_probe) before writing stages")
        if name in self.stage_names:
            raise RunFormatError(self.path / MANIFEST, f"stage {name!r} already exists")
        missing = [p for p in self._probes if p not in embeddings]
        extra = [p for p in embeddings if p not in self._probes]
        if missing or extra:
            raise ValueError(f"stage {name!r}: embeddings must cover exactly the probe sets {self.probe_names} (missing {missing}, unknown {extra})")
        checked = {p: {m: self._check_array(name, p, m, embeddings[p], dtype) for m in MODALITIES} for p in self._probes}

        final = self.path / "stages" / name
        tmp = self._tmpdir(final.parent)
        entry: dict = {"name": name, "meta": None, "arrays": {}}
        try:
            for probe, mods in checked.items():
                (tmp / probe).mkdir()
                entry["arrays"][probe] = {}
                for mod, arr in mods.items():
                    digest = write_npy_synced(tmp / probe / f"{mod}.npy", arr)
                    entry["arrays"][probe][mod] = {
                        "path": f"stages/{name}/{probe}/{mod}.npy",
                        "shape": list(arr.shape),
                        "dtype": str(arr.dtype),
                        "sha256": digest,
                    }
                fsync_dir(tmp / probe)
            if meta is not None:
                atomic_write_json(tmp / "meta.json", _plain_json(dict(meta)))
                entry["meta"] = f"stages/{name}/meta.json"
            self._move_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._manifest["stages"].append(entry)
        self._commit_manifest()

    # --- internals ------------------------------------------------------------------------------
    def _check_array(self, stage: str, probe: str, modality: str, mods: Mapping, dtype: str | None) -> np.ndarray:
        if modality not in mods:
            raise ValueError(f"stage {stage!r}, probe {probe!r}: no {modality!r} array")
        arr = np.asarray(mods[modality])
        where = f"stage {stage!r}, probe {probe!r}, {modality}"
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise ValueError(f"{where}: expected an [n, d] array, got shape {arr.shape}")
        expected = self._probes[probe][0 if modality == "image" else 1]
        if arr.shape[0] != expected:
            raise ValueError(f"{where}: {arr.shape[0]} rows but the probe table has {expected}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{where}: dtype {arr.dtype} is not floating point")
        target = np.dtype(dtype) if dtype else (np.float16 if arr.dtype == np.float16 else np.float32)
        if target not in (np.float16, np.float32):
            raise ValueError(f"dtype must be float16 or float32, not {dtype}")
        out = arr.astype(target, copy=False)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise ValueError(f"{where}: {int(bad.sum())} row(s) contain NaN or inf (first: row {int(np.argmax(bad))})")
        return out

    def _tmpdir(self, parent: Path) -> Path:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        return tmp

    def _move_into_place(self, tmp: Path, final: Path) -> None:
        fsync_dir(tmp)
        if final.exists():  # an orphan of a crashed writer: never listed in the manifest
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(final.parent)

    def _remove_orphans(self) -> None:
        listed = set(self.stage_names)
        root = self.path / "stages"
        if root.is_dir():
            for child in root.iterdir():
                if child.is_dir() and (child.name.startswith(".tmp-") or child.name not in listed):
                    shutil.rmtree(child, ignore_errors=True)

    def _commit_manifest(self) -> None:
        self._manifest["updated"] = _now()
        check_manifest(self._manifest, self.path / MANIFEST)
        atomic_write_json(self.path / MANIFEST, self._manifest)


def write_run(
    path: str | os.PathLike,
    probes: list[ProbeSet] | ProbeSet,
    stages: Mapping[str, StageArrays],
    metadata: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a whole run in one call: ``stages`` maps stage names (in order) to per-probe arrays."""
    writer = RunWriter.create(path, metadata=metadata, overwrite=overwrite)
    for probe in [probes] if isinstance(probes, ProbeSet) else probes:
        writer.add_probe(probe)
    for name, arrays in stages.items():
        writer.write_stage(name, arrays)
    return writer.path
