"""Constants of run format v1 and the structural check of a manifest (mirrors ``run.schema.json``)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path, PurePosixPath

from ..errors import RunFormatError

FORMAT_NAME = "spatial-disorder-run"
FORMAT_VERSION = 1
MANIFEST = "run.json"
MODALITIES = ("image", "text")
ALLOWED_DTYPES = ("float16", "float32")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Probe and stage names (docs/run-format.md); matched in full, so no newline or other control character gets through.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def valid_name(name: object) -> bool:
    """Whether ``name`` is a legal probe or stage name (also folder names: ``.`` and ``..`` are refused)."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None and name not in (".", "..")


NAME_RULE = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of ``run.json``, as shipped with the package."""
    return json.loads(resources.files(__package__).joinpath("run.schema.json").read_text())


def safe_relpath(run_dir: Path, rel: object, manifest: Path) -> Path:
    """Resolve a manifest path, refusing anything that could leave the run directory."""
    if not isinstance(rel, str) or not rel:
        raise RunFormatError(manifest, f"path {rel!r} is not a non-empty string")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel or ".." in pure.parts or re.match(r"^[A-Za-z]:", rel):
        raise RunFormatError(manifest, f"path {rel!r} escapes the run directory")
    full = (run_dir / pure).resolve()
    root = run_dir.resolve()
    if full != root and root not in full.parents:
        raise RunFormatError(manifest, f"path {rel!r} escapes the run directory (through a symlink)")
    return run_dir / pure


def check_manifest(doc: object, manifest: Path) -> dict:
    """Check the structure of a parsed manifest; raise one ``RunFormatError`` naming the first problem."""

    def need(cond: bool, problem: str) -> None:
        if not cond:
            raise RunFormatError(manifest, problem)

    need(isinstance(doc, dict), "manifest is not a JSON object")
    need(doc.get("format") == FORMAT_NAME, f"not a run manifest (format is {doc.get('format')!r}, expected {FORMAT_NAME!r})")
    version = doc.get("format_version")
    need(isinstance(version, int) and not isinstance(version, bool), f"format_version {version!r} is not an integer")
    need(
        version == FORMAT_VERSION,
        f"unsupported run format version {version} (this reader understands version {FORMAT_VERSION}; "
        + ("upgrade spatial-disorder)" if version > FORMAT_VERSION else "the run is too old)"),
    )
    need(isinstance(doc.get("metadata", {}), dict), "metadata is not an object")
    probes = doc.get("probes")
    need(isinstance(probes, list), "probes is not a list")
    seen = set()
    for i, p in enumerate(probes):
        need(isinstance(p, dict), f"probes[{i}] is not an object")
        for key in ("name", "images", "texts"):
            need(isinstance(p.get(key), str), f"probes[{i}].{key} is missing or not a string")
        for key in ("n_images", "n_texts"):
            need(isinstance(p.get(key), int) and p[key] >= 0, f"probes[{i}].{key} is missing or not a count")
        need(valid_name(p["name"]), f"probes[{i}].name {p['name']!r} is not a valid probe name ({NAME_RULE})")
        need(p["name"] not in seen, f"probe {p['name']!r} is listed twice")
        seen.add(p["name"])
    stages = doc.get("stages")
    need(isinstance(stages, list), "stages is not a list")
    names = set()
    for i, s in enumerate(stages):
        need(isinstance(s, dict), f"stages[{i}] is not an object")
        need(isinstance(s.get("name"), str), f"stages[{i}].name is missing")
        need(valid_name(s["name"]), f"stages[{i}].name {s['name']!r} is not a valid stage name ({NAME_RULE})")
        need(s["name"] not in names, f"stage {s['name']!r} is listed twice")
        names.add(s["name"])
        need(s.get("meta") is None or isinstance(s.get("meta"), str), f"stage {s['name']!r}: meta is not a path")
        arrays = s.get("arrays")
        need(isinstance(arrays, dict), f"stage {s['name']!r}: arrays is not an object")
        for probe in seen:
            need(probe in arrays, f"stage {s['name']!r} has no arrays for probe {probe!r}")
        for probe, mods in arrays.items():
            need(probe in seen, f"stage {s['name']!r} has arrays for undeclared probe {probe!r}")
            need(isinstance(mods, dict), f"stage {s['name']!r}: arrays[{probe!r}] is not an object")
            for mod in MODALITIES:
                entry = mods.get(mod)
                where = f"stage {s['name']!r}, probe {probe!r}, {mod}"
                need(isinstance(entry, dict), f"{where}: array entry is missing")
                need(isinstance(entry.get("path"), str), f"{where}: path is missing")
                shape = entry.get("shape")
                need(
                    isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape),
                    f"{where}: shape {shape!r} is not [n, d]",
                )
                need(entry.get("dtype") in ALLOWED_DTYPES, f"{where}: dtype {entry.get('dtype')!r} is not one of {ALLOWED_DTYPES}")
                need(isinstance(entry.get("sha256"), str) and SHA256.match(entry["sha256"]) is not None, f"{where}: sha256 is missing or malformed")
    return doc
