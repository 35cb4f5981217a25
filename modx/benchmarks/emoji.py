"""The emoji-styles benchmark: the same emoji concepts drawn in two open styles (Noto, Twemoji), with CLDR captions.

Sources are npm packages at pinned versions, fetched with ``npm pack`` (or, where npm is absent, straight from the
registry over HTTPS with the standard library) and checked against the pinned sha512 integrity string before
anything is unpacked. The dataset is built once into a cache folder and reused. This
module needs only Pillow, pandas and numpy (never torch) so that fetching and inspecting the data stays cheap.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spatial_disorder.atomic import atomic_write_bytes, atomic_write_json, fsync_dir, sha256_file, write_synced
from spatial_disorder.errors import SpatialDisorderError

DATASET_NAME = "emoji-styles-v1"
STYLES = ("google", "twitter")
IMAGE_SIZE = 64
SPLIT_SEED = 20230513
TEST_FRACTION = 0.2
MAX_CAPTIONS = 5
CAPTION_COLUMNS = ("filepath", "title", "image_id", "style", "concept", "category", "subcategory", "split")
ITEM_COLUMNS = ("image_id", "filepath", "style", "concept", "label", "name", "category", "subcategory", "split", "n_captions")
NPM_TIMEOUT_S = 900
HTTP_TIMEOUT_S = 60  # per network operation (connect, each read)
DEFAULT_REGISTRY = "https://registry.npmjs.org/"


class BenchmarkDataError(SpatialDisorderError):
    """The benchmark data cannot be fetched, verified or built; ``str(err)`` is one line saying what to do."""


@dataclass(frozen=True)
class NpmSource:
    """One pinned npm package: what it is for, and the registry's ``dist.integrity`` of its tarball."""

    name: str
    version: str
    integrity: str
    role: str  # "images" (an emoji-datasource style) or "captions" (emojibase-data)
    style: str | None
    license: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball_name(self) -> str:
        return f"{self.name}-{self.version}.tgz"


SOURCES: tuple[NpmSource, ...] = (
    NpmSource(
        "emoji-datasource-google",
        "16.0.0",
        "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
        "images",
        "google",
        "data MIT (Cal Henderson); images Noto Emoji by Google, Apache-2.0",
    ),
    NpmSource(
        "emoji-datasource-twitter",
        "16.0.0",
        "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
        "images",
        "twitter",
        "data MIT (Cal Henderson); images Twemoji by Twitter, Inc and other contributors, CC-BY-4.0",
    ),
    NpmSource(
        "emojibase-data",
        "17.0.0",
        "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
        "captions",
        None,
        "MIT (Miles Johnson); labels and tags from Unicode CLDR",
    ),
)

TWEMOJI_ATTRIBUTION = (
    "Twemoji by Twitter, Inc and other contributors, CC-BY 4.0, https://creativecommons.org/licenses/by/4.0/"
)
NOTO_ATTRIBUTION = "Noto Emoji by Google, Apache License 2.0, https://github.com/googlefonts/noto-emoji"


def attribution_text() -> str:
    """The credit lines that must travel with any figure or report built on this benchmark (CC-BY requires it)."""
    return (
        f"Emoji images: {TWEMOJI_ATTRIBUTION}; {NOTO_ATTRIBUTION}. "
        "Emoji metadata: emoji-datasource by Cal Henderson (MIT). "
        "Captions: emojibase-data by Miles Johnson (MIT), from Unicode CLDR annotations."
    )


_LICENSES_MD = f"""# Licences of the emoji-styles benchmark

This folder was built from three npm packages. Their licences apply to the files derived from them.

| Source | Used for | Licence |
|---|---|---|
| emoji-datasource-google 16.0.0 | `images/google/*.png` | images: Noto Emoji (Google), Apache-2.0; metadata: MIT |
| emoji-datasource-twitter 16.0.0 | `images/twitter/*.png` | images: Twemoji (Twitter, Inc and other contributors), CC-BY-4.0; metadata: MIT |
| emoji-datasource (either package) | names, categories, subcategories | MIT, Copyright (c) 2013 Cal Henderson |
| emojibase-data 17.0.0 | captions (CLDR labels and tags) | MIT, Copyright (c) 2017-2019 Miles Johnson; annotations from Unicode CLDR (Unicode licence) |

The images were composited on white and re-encoded as RGB PNG; nothing else was changed.

## Attribution (required by CC-BY-4.0 for the Twitter style)

{TWEMOJI_ATTRIBUTION}

Also credited: {NOTO_ATTRIBUTION}.

Any figure, report or model card that shows or was trained on these images should carry the line:

> {attribution_text()}

The Apple and Facebook image sets of emoji-datasource are not openly licensed and are not used.
"""


# ----------------------------------------------------------------------------------------------------------
# Cache location and the public entry points
# ----------------------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """``$SD_DATA`` if set, else ``~/.cache/spatial-disorder``."""
    env = os.environ.get("SD_DATA")
    return Path(env).expanduser() if env else Path("~/.cache/spatial-disorder").expanduser()


def ensure_emoji_dataset(data_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Return the dataset folder ``<data_dir>/emoji-styles-v1``, fetching and building it first if it is missing."""
    cache = (Path(data_dir).expanduser() if data_dir is not None else default_data_dir()).absolute()
    target = cache / DATASET_NAME
    if _is_complete(target):
        return target
    if target.exists():
        raise BenchmarkDataError(f"{target}: exists but has no valid dataset.json (an unfinished copy?); delete it and retry")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchmarkDataError(f"{cache}: cannot create the data folder ({exc.strerror}); pass another --data-dir or set SD_DATA") from exc
    work = Path(tempfile.mkdtemp(prefix=f".{DATASET_NAME}.", suffix=".tmp", dir=cache))
    try:
        started = time.monotonic()
        tarballs = {src.spec: _fetch(src, work / "downloads", cache / "downloads", progress) for src in SOURCES}
        build = work / DATASET_NAME
        info = build_emoji_dataset(tarballs, build, progress=progress)
        info["build_seconds"] = round(time.monotonic() - started, 1)
        atomic_write_json(build / "dataset.json", info)
        fsync_dir(build)
        try:
            os.rename(build, target)
        except OSError:
            if not _is_complete(target):  # another process finished first: use its copy
                raise
        fsync_dir(cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        _say(progress, f"dataset ready: {target}")
    return target


def load_emoji_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``captions.csv`` (one row per caption) from a dataset folder or the file itself; adds ``image_path`` (absolute)."""
    path = Path(path)
    csv_path = path / "captions.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise BenchmarkDataError(f"{csv_path}: not found; build the dataset with `python -m modx.benchmarks emoji`")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in CAPTION_COLUMNS if c not in table.columns]
    if missing:
        raise BenchmarkDataError(f"{csv_path}: missing columns {', '.join(missing)}")
    table["image_path"] = [str(csv_path.parent / p) for p in table["filepath"]]
    return table


def _is_complete(folder: Path) -> bool:
    try:
        info = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("name") == DATASET_NAME and (folder / "captions.csv").is_file()


# ----------------------------------------------------------------------------------------------------------
# Fetching and verifying
# ----------------------------------------------------------------------------------------------------------


def sri_sha512(path: Path) -> str:
    """The npm/Subresource-Integrity string of a file: ``sha512-`` + base64 of its sha512 digest."""
    h = hashlib.sha512()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode("ascii")


def _fetch(src: NpmSource, dest: Path, local: Path, progress) -> Path:
    """Get ``src``'s tarball: a copy already placed in ``<cache>/downloads`` if present, else ``npm pack``; verify it."""
    placed = local / src.tarball_name
    if placed.is_file():
        _verify(src, placed)
        _say(progress, f"using {placed} (integrity ok)")
        return placed
    npm = shutil.which("npm")
    if npm is None:
        return _fetch_http(src, npm_registry(), dest, local, progress)
    dest.mkdir(parents=True, exist_ok=True)
    pack_dir = Path(tempfile.mkdtemp(prefix="pack.", dir=dest))
    _say(progress, f"fetching {src.spec} with npm pack ...")
    env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false")
    try:
        done = subprocess.run(
            [npm, "pack", src.spec, "--ignore-scripts"],
            cwd=pack_dir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkDataError(f"npm pack {src.spec} took over {NPM_TIMEOUT_S} s; check the network or the npm registry and retry") from exc
    except OSError as exc:
        raise BenchmarkDataError(f"cannot run {npm} ({exc.strerror}); install Node.js with npm and retry") from exc
    if done.returncode != 0:
        raise BenchmarkDataError(
            f"npm pack {src.spec} failed ({_npm_reason(done.stderr, done.returncode)}); connect to the internet or the npm "
            f"registry (npm_config_registry) and retry, or put {src.tarball_name} in {local}"
        )
    found = sorted(pack_dir.glob("*.tgz"))
    if len(found) != 1:
        raise BenchmarkDataError(f"npm pack {src.spec} left {len(found)} .tgz files in its folder, expected 1")
    _verify(src, found[0])
    size = found[0].stat().st_size
    _say(progress, f"  {src.tarball_name}: {size / 1e6:.1f} MB, integrity ok")
    return found[0]


def npm_registry(env: dict | None = None, cwd: Path | None = None, home: Path | None = None) -> str:
    """The registry npm would use: ``$npm_config_registry`` (any case), else ``registry=`` in the project's
    ``.npmrc`` (the working folder), then the user's (``$npm_config_userconfig`` or ``~/.npmrc``), else the public one."""
    env = dict(os.environ if env is None else env)
    for key, value in env.items():
        if key.lower() == "npm_config_registry" and value.strip():
            return value.strip()
    user = env.get("npm_config_userconfig") or env.get("NPM_CONFIG_USERCONFIG")
    rc_files = [Path(cwd or Path.cwd()) / ".npmrc", Path(user) if user else Path(home or Path.home()) / ".npmrc"]
    for rc in rc_files:
        value = _npmrc_value(rc, "registry", env)
        if value:
            return value
    return DEFAULT_REGISTRY


def _npmrc_value(path: Path, key: str, env: dict) -> str | None:
    """``key = value`` from an npm ini file (``;``/``#`` comments, ``${VAR}`` expanded); None when absent."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith((";", "#")) and name.strip() == key:
            value = value.strip().strip('"').strip("'")
            return re.sub(r"\$\{([^}]+)\}", lambda m: env.get(m.group(1), ""), value) or None
    return None


def _http_get(url: str, accept: str = "*/*"):
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise BenchmarkDataError(f"{url}: only http(s) registry URLs are supported")
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": f"spatial-disorder ({DATASET_NAME})"})
    return urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)  # noqa: S310 (scheme checked above)


def _fetch_http(src: NpmSource, registry: str, dest: Path, local: Path, progress) -> Path:
    """Without npm: read ``src``'s registry metadata, download its tarball, verify it and keep it in ``local``."""
    hint = f"connect to the internet or the npm registry (npm_config_registry), install npm, or put {src.tarball_name} in {local}"
    meta_url = registry.rstrip("/") + "/" + urllib.parse.quote(src.name, safe="@")
    _say(progress, f"fetching {src.spec} from {registry} (npm not found on PATH) ...")
    try:
        with _http_get(meta_url, "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8") as response:
            doc = json.loads(response.read().decode("utf-8"))
        dist = doc["versions"][src.version]["dist"]
        tarball_url = str(dist["tarball"])
    except (urllib.error.URLError, OSError) as exc:
        raise BenchmarkDataError(f"cannot fetch {src.spec} metadata from {meta_url} ({_net_reason(exc)}); {hint}") from None
    except (ValueError, KeyError, TypeError):
        raise BenchmarkDataError(f"{meta_url}: no version {src.version} with a tarball in the registry's answer; {hint}") from None
    if dist.get("integrity") not in (None, src.integrity):
        raise BenchmarkDataError(f"{meta_url}: the registry's integrity for {src.spec} is not the pinned one; nothing was built")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / src.tarball_name
    try:
        with _http_get(tarball_url) as response, open(target, "wb") as fh:
            shutil.copyfileobj(response, fh, 1 << 20)
    except (urllib.error.URLError, OSError) as exc:
        raise BenchmarkDataError(f"cannot download {tarball_url} ({_net_reason(exc)}); {hint}") from None
    _verify(src, target)
    local.mkdir(parents=True, exist_ok=True)
    os.replace(target, local / src.tarball_name)  # verified: kept beside the pre-placed tarballs for the next build
    fsync_dir(local)
    _say(progress, f"  {src.tarball_name}: {(local / src.tarball_name).stat().st_size / 1e6:.1f} MB, integrity ok")
    return local / src.tarball_name


def _net_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    return " ".join(str(reason).split())[:200]


def _npm_reason(stderr: str, code: int) -> str:
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    codes = [ln for ln in lines if re.search(r"\b(code|errno)\b", ln)]
    reason = (codes or lines or [f"exit status {code}"])[0]
    return " ".join(reason.split())[:200]


def _verify(src: NpmSource, tarball: Path) -> None:
    got = sri_sha512(tarball)
    if got != src.integrity:
        raise BenchmarkDataError(
            f"{tarball.name}: integrity mismatch for {src.spec} (expected {src.integrity[:24]}..., got {got[:24]}...); "
            "the download is corrupt or not the pinned release: nothing was built"
        )


# ----------------------------------------------------------------------------------------------------------
# Unpacking safely
# ----------------------------------------------------------------------------------------------------------


def _safe_member_name(member: tarfile.TarInfo, tarball: Path) -> str:
    name = member.name
    norm = posixpath.normpath(name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or norm == ".." or norm.startswith("../") or ".." in name.split("/"):
        raise BenchmarkDataError(f"{tarball.name}: unsafe member {name!r} (path traversal) refused; nothing was built")
    return norm


def read_members(tarball: Path, wanted) -> dict[str, bytes]:
    """Stream ``tarball`` once and return ``{name: bytes}`` for the regular-file members that ``wanted(name)`` accepts.

    Every member name is checked (no absolute paths, no ``..``) and links are never followed, so a hostile
    tarball can neither write outside the build folder nor smuggle a link in. Nothing is written to disk here.
    """
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, mode="r|gz") as tf:
            for member in tf:
                name = _safe_member_name(member, tarball)
                if not wanted(name):
                    continue
                if not member.isreg():
                    raise BenchmarkDataError(f"{tarball.name}: member {name!r} is not a regular file; refused")
                fh = tf.extractfile(member)
                out[name] = fh.read() if fh is not None else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BenchmarkDataError(f"{tarball.name}: unreadable tarball ({exc})") from exc
    return out


def _read_json(blobs: dict[str, bytes], name: str, tarball: Path):
    if name not in blobs:
        raise BenchmarkDataError(f"{tarball.name}: {name} not found in the package")
    try:
        return json.loads(blobs[name].decode("utf-8"))
    except ValueError as exc:
        raise BenchmarkDataError(f"{tarball.name}: {name} is not valid JSON ({exc})") from exc


# ----------------------------------------------------------------------------------------------------------
# Captions and split
# ----------------------------------------------------------------------------------------------------------


def _article(text: str) -> str:
    return "an" if text[:1].lower() in "aeiou" else "a"


def make_captions(label: str, tags=(), short_names=()) -> list[str]:
    """Two to five captions for one concept: the CLDR label, then short sentences from the label, tags and short names."""
    label = " ".join(str(label).split())
    tags = [" ".join(str(t).split()) for t in tags]
    tags = [t for t in tags if t and t.lower() != label.lower()]
    art = _article(label)
    captions = [label, f"an emoji of {art} {label}"]
    if label.startswith("flag: "):
        captions.append(f"the flag of {label[len('flag: '):]}")
    if tags:  # "grinning face: cheerful, cheery, face, grin"; "flag: Germany (DE, flag)"
        captions.append(f"{label} ({', '.join(tags[:4])})" if ":" in label else f"{label}: {', '.join(tags[:4])}")
    if len(tags) > 4:
        captions.append(f"{art} {label} ({', '.join(tags[4:8])})" if ":" in label else f"{art} {label}: {', '.join(tags[4:8])}")
    names = []
    for s in short_names:
        words = str(s).replace("_", " ").strip()
        if re.fullmatch(r"[a-z][a-z ]{2,}", words) and words != label.lower() and words not in names:
            names.append(words)
    if names:
        captions.append(f"{label}, also called {' or '.join(names[:2])}")
    seen: set[str] = set()
    unique = []
    for c in captions:
        if c.lower() not in seen:
            seen.add(c.lower())
            unique.append(c)
    return unique[:MAX_CAPTIONS]


def split_concepts(concepts, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> dict[str, str]:
    """Map each concept to "train" or "test": a seeded permutation of the sorted concepts, the first share is test."""
    ordered = sorted(set(concepts))
    n_test = int(round(test_fraction * len(ordered)))
    order = np.random.default_rng(seed).permutation(len(ordered))
    test = {ordered[i] for i in order[:n_test]}
    return {c: ("test" if c in test else "train") for c in ordered}


def _composite_png(data: bytes, where: str) -> bytes:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgba = im.convert("RGBA")
    except Exception as exc:  # Pillow raises many types for a bad file
        raise BenchmarkDataError(f"{where}: not a readable image ({exc})") from exc
    if rgba.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgba = rgba.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    out = io.BytesIO()
    Image.alpha_composite(white, rgba).convert("RGB").save(out, format="PNG", optimize=True)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------


def _lookup_label(entry: dict, labels: dict[str, dict]) -> dict | None:
    for key in (entry.get("unified"), str(entry.get("unified") or "").replace("-FE0F", ""), entry.get("non_qualified")):
        if key and key.upper() in labels:
            return labels[key.upper()]
    return None


def build_emoji_dataset(tarballs: dict[str, Path], out: Path, progress=True) -> dict:
    """Build the dataset folder ``out`` from verified tarballs (``{spec: path}``); returns the dataset.json content.

    Concepts are the base emoji (no skin-tone variants) drawn in every style and labelled in emojibase.
    """
    image_sources = [s for s in SOURCES if s.role == "images"]
    caption_source = next(s for s in SOURCES if s.role == "captions")
    caption_tar = Path(tarballs[caption_source.spec])
    _say(progress, f"reading captions from {caption_tar.name} ...")
    blobs = read_members(caption_tar, lambda n: n == "package/en/data.json")
    labels = {str(e["hexcode"]).upper(): e for e in _read_json(blobs, "package/en/data.json", caption_tar) if "hexcode" in e and e.get("label")}

    tables: dict[str, list[dict]] = {}
    pngs: dict[str, dict[str, bytes]] = {}
    for src in image_sources:
        tar = Path(tarballs[src.spec])
        prefix = f"package/img/{src.style}/64/"
        _say(progress, f"unpacking {src.style} 64 px images from {tar.name} ...")
        blobs = read_members(tar, lambda n, p=prefix: n == "package/emoji.json" or (n.startswith(p) and n.endswith(".png") and "/" not in n[len(p):]))
        tables[src.style] = _read_json(blobs, "package/emoji.json", tar)
        pngs[src.style] = {n[len(prefix):]: b for n, b in blobs.items() if n.startswith(prefix)}

    first = image_sources[0].style
    meta = {e["unified"]: e for e in tables[first] if isinstance(e, dict) and e.get("unified")}
    index = {st: {e.get("unified"): e for e in table if isinstance(e, dict)} for st, table in tables.items()}
    concepts = []
    for unified, entry in meta.items():
        ok = _lookup_label(entry, labels) is not None
        for src in image_sources:
            other = index[src.style].get(unified)
            ok = ok and other is not None and bool(other.get(f"has_img_{src.style}")) and other.get("image") in pngs[src.style]
        if ok:
            concepts.append(unified)
    if not concepts:
        raise BenchmarkDataError("no emoji is drawn in every style and labelled in emojibase: the packages do not match the pinned layout")
    concepts.sort(key=lambda u: (meta[u].get("sort_order", 0), u))
    split = split_concepts(concepts)

    out.mkdir(parents=True)
    captions_rows, item_rows = [], []
    n_total = len(concepts) * len(image_sources)
    done = 0
    for src in image_sources:
        (out / "images" / src.style).mkdir(parents=True)
        for unified in concepts:
            entry = meta[unified]
            lab = _lookup_label(entry, labels)
            caps = make_captions(lab["label"], lab.get("tags") or (), entry.get("short_names") or ())
            concept = unified.lower()
            rel = f"images/{src.style}/{concept}.png"
            write_synced(out / rel, _composite_png(pngs[src.style][entry["image"]], f"{src.tarball_name}:{entry['image']}"))
            image_id = f"{src.style}/{concept}"
            common = {"style": src.style, "concept": concept, "category": entry.get("category") or "", "subcategory": entry.get("subcategory") or "", "split": split[unified]}
            item_rows.append({"image_id": image_id, "filepath": rel, **common, "label": lab["label"], "name": entry.get("name") or "", "n_captions": len(caps)})
            captions_rows.extend({"filepath": rel, "title": c, "image_id": image_id, **common} for c in caps)
            done += 1
            if done % 500 == 0 or done == n_total:
                _say(progress, f"  images {done}/{n_total}")

    captions_csv = _csv_bytes(captions_rows, CAPTION_COLUMNS)
    items_csv = _csv_bytes(item_rows, ITEM_COLUMNS)
    atomic_write_bytes(out / "captions.csv", captions_csv)
    atomic_write_bytes(out / "items.csv", items_csv)
    atomic_write_bytes(out / "LICENSES.md", _LICENSES_MD.encode("utf-8"))
    atomic_write_bytes(out / "ATTRIBUTION.md", (f"# Attribution\n\n{attribution_text()}\n\n{TWEMOJI_ATTRIBUTION}\n").encode())
    n_test = sum(1 for c in concepts if split[c] == "test")
    return {
        "name": DATASET_NAME,
        "image_size": IMAGE_SIZE,
        "styles": [s.style for s in image_sources],
        "sources": [
            {"name": s.name, "version": s.version, "integrity": s.integrity, "tarball_bytes": Path(tarballs[s.spec]).stat().st_size, "license": s.license}
            for s in SOURCES
        ],
        "split": {"seed": SPLIT_SEED, "test_fraction": TEST_FRACTION, "by": "concept"},
        "counts": {
            "concepts": len(concepts),
            "concepts_train": len(concepts) - n_test,
            "concepts_test": n_test,
            "images": len(item_rows),
            "images_per_style": {s.style: len(concepts) for s in image_sources},
            "captions": len(captions_rows),
        },
        "files": {"captions.csv": sha256_file(out / "captions.csv"), "items.csv": sha256_file(out / "items.csv")},
        "attribution": attribution_text(),
    }


def add_cli_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data-dir", default=None, help="cache folder (default: $SD_DATA, else ~/.cache/spatial-disorder)")
    parser.add_argument("--quiet", action="store_true", help="print only the dataset folder")
    return parser


def cli(args: argparse.Namespace) -> int:
    """Build (or find) the dataset; print its folder on stdout, counts and credits on stderr; errors in one line."""
    try:
        path = ensure_emoji_dataset(args.data_dir, progress=not args.quiet)
    except BenchmarkDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        info = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
        print(json.dumps(info["counts"]), file=sys.stderr)
        print(attribution_text(), file=sys.stderr)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m modx.benchmarks.emoji [--data-dir DIR] [--quiet]``."""
    parser = argparse.ArgumentParser(prog="python -m modx.benchmarks.emoji",
                                     description="Fetch and build the emoji-styles benchmark; print its folder.")
    return cli(add_cli_arguments(parser).parse_args(argv))


def _csv_bytes(rows: list[dict], columns) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _say(progress, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
