"""The emoji-styles benchmark builder, offline: fake npm packages in the real layout, served by a fake `npm` on PATH."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from modx.benchmarks import __main__ as bench_cli
from modx.benchmarks import emoji

STYLE_COLOURS = {"google": (200, 30, 30), "twitter": (30, 30, 200)}

# unified code -> (emojibase hexcode or None, label, tags, in twitter?)
CONCEPTS = {
    "1F600": ("1F600", "grinning face", ["cheerful", "face", "grin", "happy", "laugh", "smile"], True),
    "1F603": ("1F603", "grinning face with big eyes", ["face", "mouth", "open"], True),
    "1F604": ("1F604", "grinning face with smiling eyes", ["eye", "face"], True),
    "1F601": ("1F601", "beaming face with smiling eyes", ["beaming", "eye", "face", "grin"], True),
    "1F606": ("1F606", "grinning squinting face", [], True),
    "2764-FE0F": ("2764", "red heart", ["heart"], True),  # emojibase drops the FE0F: matched by the stripped code
    "1F44D": ("1F44D", "thumbs up", ["+1", "hand", "thumb", "up"], True),  # has skin-tone variants: only the base is used
    "1F9FF": ("1F9FF", "nazar amulet", ["bead", "charm"], False),  # no Twitter image: dropped
    "1F90C": (None, "pinched fingers", [], True),  # no emojibase label: dropped
}
EXPECTED = {"1f600", "1f603", "1f604", "1f601", "1f606", "2764-fe0f", "1f44d"}


def _png(colour, size=64) -> bytes:
    """Transparent square with an opaque disc in the middle (like an emoji PNG)."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    r = size // 4
    for x in range(size // 2 - r, size // 2 + r):
        for y in range(size // 2 - r, size // 2 + r):
            im.putpixel((x, y), (*colour, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _datasource(style: str) -> dict[str, bytes]:
    entries, files = [], {}
    for unified, (_, label, _, in_twitter) in CONCEPTS.items():
        has = style == "google" or in_twitter
        image = unified.lower() + ".png"
        entry = {"name": label.upper(), "unified": unified, "non_qualified": None, "image": image, "short_name": label.replace(" ", "_"),
                 "short_names": [label.replace(" ", "_")], "category": "Smileys & Emotion", "subcategory": "face-smiling",
                 "sort_order": len(entries), f"has_img_{style}": has}
        if unified == "1F44D":
            entry["skin_variations"] = {"1F3FB": {"unified": "1F44D-1F3FB", "image": "1f44d-1f3fb.png", f"has_img_{style}": True}}
            files[f"package/img/{style}/64/1f44d-1f3fb.png"] = _png((0, 0, 0))
        if has:
            size = 32 if (style, unified) == ("twitter", "1F604") else 64  # one small source image: must be resized to 64
            files[f"package/img/{style}/64/{image}"] = _png(STYLE_COLOURS[style], size)
        entries.append(entry)
    files[f"package/img/{style}/sheets/64.png"] = _png((0, 0, 0), 16)
    return {"package/package.json": b"{}", "package/LICENSE": b"MIT", "package/emoji.json": json.dumps(entries).encode(), **files}


def _emojibase(extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    data = [{"label": label, "hexcode": hexcode, "tags": tags, "emoji": "?"} for hexcode, label, tags, _ in CONCEPTS.values() if hexcode]
    data.append({"label": "regional indicator A", "hexcode": "1F1E6", "emoji": "?"})
    return {"package/package.json": b"{}", "package/en/data.json": json.dumps(data).encode(), **(extra or {})}


FAKE_NPM = """#!/bin/sh
echo "$*" >> "$FAKE_NPM_LOG"
for a in "$@"; do case "$a" in *@*) spec="$a";; esac; done
exec /bin/cp "$FAKE_NPM_REPO/${spec%@*}-${spec##*@}.tgz" .
"""

OFFLINE_NPM = """#!/bin/sh
echo "npm error code ENOTFOUND" >&2
echo "npm error network request to https://registry.npmjs.org failed" >&2
exit 1
"""


def _install_npm(tmp_path: Path, monkeypatch, script: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text(script)
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Fake packages in the real layout, a fake npm that serves them, and the integrity table pinned to them."""
    repo = tmp_path / "registry"
    repo.mkdir()
    tars = {
        "emoji-datasource-google": _tar(repo / "emoji-datasource-google-16.0.0.tgz", _datasource("google")),
        "emoji-datasource-twitter": _tar(repo / "emoji-datasource-twitter-16.0.0.tgz", _datasource("twitter")),
        "emojibase-data": _tar(repo / "emojibase-data-17.0.0.tgz", _emojibase()),
    }
    monkeypatch.setattr(emoji, "SOURCES", tuple(dataclasses.replace(s, integrity=emoji.sri_sha512(tars[s.name])) for s in emoji.SOURCES))
    log = tmp_path / "npm.log"
    monkeypatch.setenv("FAKE_NPM_LOG", str(log))
    monkeypatch.setenv("FAKE_NPM_REPO", str(repo))
    _install_npm(tmp_path, monkeypatch, FAKE_NPM)
    return {"repo": repo, "log": log, "cache": tmp_path / "cache"}


def _npm_calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_build_layout_captions_split_and_images(registry):
    path = emoji.ensure_emoji_dataset(registry["cache"], progress=False)
    assert path == registry["cache"] / "emoji-styles-v1"
    table = pd.read_csv(path / "captions.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == list(emoji.CAPTION_COLUMNS)

    # only concepts drawn in both styles and labelled, no skin-tone variant
    assert set(table["concept"]) == EXPECTED
    for style in emoji.STYLES:
        assert set(table.loc[table["style"] == style, "concept"]) == EXPECTED
    assert sorted(p.name for p in (path / "images" / "twitter").iterdir()) == sorted(c + ".png" for c in EXPECTED)

    # several captions per image, the CLDR label among them, identical across styles
    per_image = table.groupby("image_id")["title"].apply(list)
    assert len(per_image) == 2 * len(EXPECTED)
    assert all(2 <= len(caps) <= 5 and len(set(caps)) == len(caps) for caps in per_image)
    assert "grinning face" in per_image["google/1f600"] and "an emoji of a grinning face" in per_image["google/1f600"]
    assert per_image["google/1f600"] == per_image["twitter/1f600"]
    assert per_image["twitter/2764-fe0f"][0] == "red heart"

    # split by concept: same in both styles, 80/20
    splits = table.drop_duplicates(["style", "concept"]).pivot(index="concept", columns="style", values="split")
    assert (splits["google"] == splits["twitter"]).all()
    assert (splits["google"] == "test").sum() == round(0.2 * len(EXPECTED))

    # relative paths; RGB composited on white, stored at 64 px
    for row in table.drop_duplicates("image_id").itertuples():
        assert not os.path.isabs(row.filepath) and row.filepath == f"images/{row.style}/{row.concept}.png"
        assert row.image_id == f"{row.style}/{row.concept}"
        with Image.open(path / row.filepath) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
            assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((63, 63)) == (255, 255, 255)
            assert im.getpixel((32, 32)) == STYLE_COLOURS[row.style]

    info = json.loads((path / "dataset.json").read_text())
    assert info["counts"]["captions"] == len(table)
    assert info["counts"]["images_per_style"] == {"google": 7, "twitter": 7}
    assert info["counts"]["concepts_test"] + info["counts"]["concepts_train"] == 7
    items = pd.read_csv(path / "items.csv", dtype=str)
    assert len(items) == 14 and set(items["image_id"]) == set(table["image_id"])
    assert emoji.TWEMOJI_ATTRIBUTION in (path / "LICENSES.md").read_text()
    assert "https://creativecommons.org/licenses/by/4.0/" in emoji.attribution_text()
    assert not [p for p in registry["cache"].iterdir() if p.name != "emoji-styles-v1"]  # temp folder and tarballs gone

    loaded = emoji.load_emoji_table(path)
    assert len(loaded) == len(table) and all(Path(p).is_file() and Path(p).is_absolute() for p in loaded["image_path"])


def test_second_call_reuses_without_fetching(registry, monkeypatch):
    monkeypatch.setenv("SD_DATA", str(registry["cache"]))
    first = emoji.ensure_emoji_dataset(progress=False)
    assert _npm_calls(registry["log"]) == 3
    stamp = (first / "dataset.json").stat().st_mtime_ns
    assert emoji.ensure_emoji_dataset(progress=False) == first
    assert _npm_calls(registry["log"]) == 3
    assert (first / "dataset.json").stat().st_mtime_ns == stamp


def test_integrity_mismatch_is_one_line_and_leaves_nothing(registry, monkeypatch):
    bad = tuple(dataclasses.replace(s, integrity="sha512-" + "A" * 86 + "==") if s.style == "twitter" else s for s in emoji.SOURCES)
    monkeypatch.setattr(emoji, "SOURCES", bad)
    with pytest.raises(emoji.BenchmarkDataError) as err:
        emoji.ensure_emoji_dataset(registry["cache"], progress=False)
    msg = str(err.value)
    assert "integrity mismatch" in msg and "emoji-datasource-twitter@16.0.0" in msg and "\n" not in msg
    assert list(registry["cache"].iterdir()) == []


def test_without_npm_an_unreachable_registry_is_one_line(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("npm_config_registry", _closed_port_url())
    with pytest.raises(emoji.BenchmarkDataError, match="cannot fetch emoji-datasource-google@16.0.0 metadata from") as err:
        emoji.ensure_emoji_dataset(tmp_path / "cache", progress=False)
    assert "\n" not in str(err.value) and "put emoji-datasource-google-16.0.0.tgz in" in str(err.value)
    assert bench_cli.main(["emoji", "--data-dir", str(tmp_path / "cache"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot fetch")
    assert list((tmp_path / "cache").iterdir()) == []


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def http_registry(registry, tmp_path, monkeypatch):
    """The fake packages behind a local HTTP registry (metadata JSON + tarballs), and no npm on PATH."""
    import http.server
    import threading

    requests: list[str] = []
    tarballs = {p.name: p for p in registry["repo"].iterdir()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            host = f"http://127.0.0.1:{self.server.server_address[1]}"
            name = self.path.strip("/")
            if name.startswith("-/"):
                body = tarballs[name[2:]].read_bytes() if name[2:] in tarballs else None
            else:
                versions = {s.version: {"dist": {"tarball": f"{host}/-/{s.tarball_name}", "integrity": s.integrity}}
                            for s in emoji.SOURCES if s.name == name}
                body = json.dumps({"name": name, "versions": versions}).encode() if versions else None
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    empty = tmp_path / "no-npm-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("npm_config_userconfig", str(tmp_path / "no-user-npmrc"))
    for key in [k for k in os.environ if k.lower() == "npm_config_registry"]:
        monkeypatch.delenv(key)
    yield {**registry, "url": f"http://127.0.0.1:{server.server_address[1]}/", "requests": requests, "tarballs": tarballs}
    server.shutdown()
    server.server_close()


def test_without_npm_the_registry_is_read_over_http(http_registry, monkeypatch):
    monkeypatch.setenv("npm_config_registry", http_registry["url"])
    path = emoji.ensure_emoji_dataset(http_registry["cache"], progress=False)
    assert set(emoji.load_emoji_table(path)["concept"]) == EXPECTED
    assert sorted(http_registry["requests"]) == sorted([f"/{s.name}" for s in emoji.SOURCES] + [f"/-/{s.tarball_name}" for s in emoji.SOURCES])
    kept = http_registry["cache"] / "downloads"  # verified tarballs stay in the cache: a rebuild fetches nothing
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == {n: p.read_bytes() for n, p in http_registry["tarballs"].items()}
    import shutil

    shutil.rmtree(path)
    emoji.ensure_emoji_dataset(http_registry["cache"], progress=False)
    assert len(http_registry["requests"]) == 6
    assert _npm_calls(http_registry["log"]) == 0


def test_registry_url_from_the_project_npmrc(http_registry, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / ".npmrc").write_text("; comment\nfund=false\nregistry = ${MY_REGISTRY}\n")
    monkeypatch.setenv("MY_REGISTRY", http_registry["url"])
    monkeypatch.chdir(project)
    assert emoji.npm_registry() == http_registry["url"]
    emoji.ensure_emoji_dataset(http_registry["cache"], progress=False)
    assert len(http_registry["requests"]) == 6


def test_npm_registry_precedence(tmp_path):
    (tmp_path / ".npmrc").write_text("registry=https://project.example/\n")
    (tmp_path / "user").write_text("registry=https://user.example/\n")
    assert emoji.npm_registry({"NPM_CONFIG_REGISTRY": "https://env.example/"}, tmp_path) == "https://env.example/"
    assert emoji.npm_registry({"npm_config_userconfig": str(tmp_path / "user")}, tmp_path) == "https://project.example/"
    assert emoji.npm_registry({"npm_config_userconfig": str(tmp_path / "user")}, tmp_path / "none") == "https://user.example/"
    assert emoji.npm_registry({}, tmp_path / "none", home=tmp_path / "none") == "https://registry.npmjs.org/"


def test_http_tarball_with_wrong_bytes_is_refused_and_not_kept(http_registry, monkeypatch):
    monkeypatch.setenv("npm_config_registry", http_registry["url"])
    bad = tuple(dataclasses.replace(s, integrity="sha512-" + "B" * 86 + "==") if s.style == "google" else s for s in emoji.SOURCES)
    monkeypatch.setattr(emoji, "SOURCES", bad)  # the registry announces the pinned value; the bytes differ
    with pytest.raises(emoji.BenchmarkDataError, match="integrity mismatch for emoji-datasource-google@16.0.0") as err:
        emoji.ensure_emoji_dataset(http_registry["cache"], progress=False)
    assert "\n" not in str(err.value)
    assert list(http_registry["cache"].iterdir()) == []


def test_python_m_emoji_help_is_its_own(tmp_path):
    out = subprocess.run([sys.executable, "-m", "modx.benchmarks.emoji", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith("usage: python -m modx.benchmarks.emoji") and "--data-dir" in out.stdout


def test_offline_npm_is_one_line(tmp_path, monkeypatch):
    _install_npm(tmp_path, monkeypatch, OFFLINE_NPM)
    with pytest.raises(emoji.BenchmarkDataError) as err:
        emoji.ensure_emoji_dataset(tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert "npm pack emoji-datasource-google@16.0.0 failed (npm error code ENOTFOUND)" in msg
    assert "connect to the internet" in msg and "\n" not in msg
    assert list((tmp_path / "cache").iterdir()) == []


def test_pre_placed_tarballs_need_no_npm(registry, monkeypatch):
    downloads = registry["cache"] / "downloads"
    downloads.mkdir(parents=True)
    for tgz in registry["repo"].iterdir():
        (downloads / tgz.name).write_bytes(tgz.read_bytes())
    empty = registry["cache"].parent / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    path = emoji.ensure_emoji_dataset(registry["cache"], progress=False)
    assert set(emoji.load_emoji_table(path)["concept"]) == EXPECTED
    assert _npm_calls(registry["log"]) == 0


def test_path_traversal_member_is_refused(registry, monkeypatch):
    evil = _tar(registry["repo"] / "emojibase-data-17.0.0.tgz", _emojibase({"package/../../evil.json": b"{}"}))
    monkeypatch.setattr(emoji, "SOURCES", tuple(dataclasses.replace(s, integrity=emoji.sri_sha512(evil)) if s.role == "captions" else s
                                                for s in emoji.SOURCES))
    with pytest.raises(emoji.BenchmarkDataError, match=r"unsafe member 'package/\.\./\.\./evil\.json' \(path traversal\) refused"):
        emoji.ensure_emoji_dataset(registry["cache"], progress=False)
    assert list(registry["cache"].iterdir()) == []
    assert not list(registry["cache"].parent.rglob("evil.json"))


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.png", "package/img/google/64/../../../../x.png"])
def test_read_members_refuses_unsafe_names(tmp_path, name):
    tgz = _tar(tmp_path / "p.tgz", {"package/emoji.json": b"[]", name: b"x"})
    with pytest.raises(emoji.BenchmarkDataError, match="path traversal"):
        emoji.read_members(tgz, lambda n: True)


def test_read_members_refuses_links(tmp_path):
    tgz = tmp_path / "p.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        info = tarfile.TarInfo("package/emoji.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(emoji.BenchmarkDataError, match="not a regular file"):
        emoji.read_members(tgz, lambda n: n == "package/emoji.json")


def test_leftover_folder_without_marker_is_reported(tmp_path):
    (tmp_path / "emoji-styles-v1").mkdir()
    with pytest.raises(emoji.BenchmarkDataError, match="no valid dataset.json"):
        emoji.ensure_emoji_dataset(tmp_path, progress=False)


def test_sri_matches_known_digest(tmp_path):
    f = tmp_path / "abc"
    f.write_bytes(b"abc")  # sha512("abc") from FIPS 180-2, base64-encoded
    assert emoji.sri_sha512(f) == "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw=="


def test_captions_known_answers():
    assert emoji.make_captions("grinning face", ["cheerful", "cheery", "face", "grin", "grinning", "happy"], ["grinning"]) == [
        "grinning face",
        "an emoji of a grinning face",
        "grinning face: cheerful, cheery, face, grin",
        "a grinning face: grinning, happy",
        "grinning face, also called grinning",
    ]
    assert emoji.make_captions("flag: Germany", ["DE", "flag"], ["flag-de", "de"]) == [
        "flag: Germany", "an emoji of a flag: Germany", "the flag of Germany", "flag: Germany (DE, flag)",
    ]
    assert emoji.make_captions("OK hand", [], ["ok_hand"]) == ["OK hand", "an emoji of an OK hand"]


@settings(max_examples=50, deadline=None)
@given(st.sets(st.text("0123456789abcdef-", min_size=1, max_size=8), max_size=60), st.integers(0, 2**32 - 1))
def test_split_is_seeded_order_free_and_80_20(concepts, seed):
    split = emoji.split_concepts(list(concepts), seed=seed)
    assert split == emoji.split_concepts(sorted(concepts, reverse=True), seed=seed)
    assert set(split) == concepts
    assert sum(v == "test" for v in split.values()) == round(0.2 * len(concepts))


def test_import_does_not_load_torch():
    code = "import sys, modx.benchmarks, modx.benchmarks.emoji; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
