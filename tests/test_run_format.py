"""Run format v1: round trip, atomicity, and one clear error for every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatial_disorder import ProbeSet, RunFormatError, RunWriter, open_run, write_run
from spatial_disorder.atomic import sha256_file
from spatial_disorder.cli import main as sd_main
from spatial_disorder.run import json_schema

RNG = np.random.default_rng(0)


def coco_like_probe(name="coco", n_images=4, captions_per_image=5) -> ProbeSet:
    images = pd.DataFrame({"id": [f"img{i}" for i in range(n_images)], "image_path": [f"val/{i}.jpg" for i in range(n_images)], "domain": "coco"})
    caps = [[f"caption {k} of image {i}" for k in range(captions_per_image)] for i in range(n_images)]
    return ProbeSet.from_captions(name, images, caps)


def stage_arrays(probe: ProbeSet, d=8, dtype=np.float32, rng=RNG):
    return {"image": rng.standard_normal((probe.n_images, d)).astype(dtype), "text": rng.standard_normal((probe.n_texts, d)).astype(dtype)}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    probe = coco_like_probe()
    flickr = ProbeSet.from_pairs("flickr", captions=["a dog", "NA", 'quote " and, comma', "<b>tag</b>"], domain="flickr")
    path = tmp_path / "run"
    w = RunWriter.create(path, metadata={"mode": "finetune", "model": "tiny", "seed": 0})
    w.add_probe(probe)
    w.add_probe(flickr)
    for s in range(3):
        w.write_stage(f"stage{s}", {"coco": stage_arrays(probe), "flickr": stage_arrays(flickr, dtype=np.float16)}, meta={"phase": s, "steps": 10 * s})
    return path


def manifest(path: Path) -> dict:
    return json.loads((path / "run.json").read_text())


def save_manifest(path: Path, doc: dict) -> None:
    (path / "run.json").write_text(json.dumps(doc))


# --- round trip -------------------------------------------------------------------------------------
def test_round_trip_many_captions_and_float16(tmp_path):
    probe = coco_like_probe(n_images=3, captions_per_image=5)
    arrays = {s: stage_arrays(probe) for s in ("s0", "s1")}
    arrays["s1"] = {k: v.astype(np.float16) for k, v in arrays["s1"].items()}
    write_run(tmp_path / "r", probe, {s: {"coco": a} for s, a in arrays.items()}, metadata={"seed": np.int64(7)})
    run = open_run(tmp_path / "r", check_finite=True)
    assert run.stages == ["s0", "s1"]
    assert run.metadata["seed"] == 7
    got = run.probes["coco"]
    assert got.n_images == 3 and got.n_texts == 15
    np.testing.assert_array_equal(got.text_to_image, np.repeat(np.arange(3), 5))
    assert [list(x) for x in got.image_to_texts()] == [list(range(5 * i, 5 * i + 5)) for i in range(3)]
    for s in ("s0", "s1"):
        for mod in ("image", "text"):
            arr = run.embeddings(s, "coco", mod)
            assert isinstance(arr, np.memmap) and not arr.flags.writeable
            assert arr.dtype == arrays[s][mod].dtype
            np.testing.assert_array_equal(np.asarray(arr), arrays[s][mod])
    assert run.embeddings(-1, "coco", "text").dtype == np.float16


def test_float64_is_stored_as_float32_and_forced_dtype(tmp_path):
    probe = ProbeSet.from_pairs("p", captions=["a", "b"])
    w = RunWriter.create(tmp_path / "r")
    w.add_probe(probe)
    w.write_stage("0", {"p": {"image": np.ones((2, 3)), "text": np.ones((2, 3))}})
    w.write_stage("1", {"p": {"image": np.ones((2, 3)), "text": np.ones((2, 3))}}, dtype="float16")
    run = open_run(tmp_path / "r")
    assert run.embeddings(0, "p", "image").dtype == np.float32
    assert run.embeddings(1, "p", "image").dtype == np.float16


def test_captions_survive_csv_exactly(run_dir):
    run = open_run(run_dir)
    captions = list(run.probes["flickr"].texts["caption"])
    assert captions == ["a dog", "NA", 'quote " and, comma', "<b>tag</b>"]
    assert run.stage_meta("stage2") == {"phase": 2, "steps": 20}


def test_manifest_matches_json_schema(run_dir):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(manifest(run_dir), json_schema())


def test_append_stages_to_existing_run(run_dir):
    w = RunWriter.open(run_dir)
    run = open_run(run_dir)
    w.write_stage("stage3", {p: stage_arrays(run.probes[p]) for p in run.probe_names})
    assert open_run(run_dir).stages == ["stage0", "stage1", "stage2", "stage3"]


def test_parquet_probe_tables(tmp_path):
    pytest.importorskip("pyarrow")
    probe = coco_like_probe(n_images=2, captions_per_image=2)
    w = RunWriter.create(tmp_path / "r")
    w.add_probe(probe, table_format="parquet")
    w.write_stage("0", {"coco": stage_arrays(probe)})
    assert open_run(tmp_path / "r").probes["coco"].n_texts == 4


def test_writer_refuses_bad_arrays(tmp_path):
    probe = ProbeSet.from_pairs("p", captions=["a", "b"])
    w = RunWriter.create(tmp_path / "r")
    w.add_probe(probe)
    bad = {
        "row count": {"image": np.ones((3, 4)), "text": np.ones((2, 4))},
        "NaN": {"image": np.array([[1.0, np.nan], [1, 2]]), "text": np.ones((2, 2))},
        "dtype": {"image": np.ones((2, 2), dtype=np.int64), "text": np.ones((2, 2))},
        "ndim": {"image": np.ones(2), "text": np.ones((2, 2))},
    }
    for arrays in bad.values():
        with pytest.raises(ValueError):
            w.write_stage("0", {"p": arrays})
    assert open_run(tmp_path / "r").stages == []
    stages = tmp_path / "r" / "stages"
    assert not stages.exists() or not any(stages.iterdir()), "a refused stage must leave no files"
    w.write_stage("0", {"p": {"image": np.ones((2, 2)), "text": np.ones((2, 2))}})
    with pytest.raises(RunFormatError, match="stages already written"):
        w.add_probe(ProbeSet.from_pairs("q", captions=["c"]))
    with pytest.raises(RunFormatError, match="already exists"):
        w.write_stage("0", {"p": {"image": np.ones((2, 2)), "text": np.ones((2, 2))}})


def test_create_refuses_to_clobber(run_dir):
    with pytest.raises(RunFormatError, match="already exists"):
        RunWriter.create(run_dir)
    RunWriter.create(run_dir, overwrite=True)
    assert open_run(run_dir).stages == []


def test_probe_validation():
    images = pd.DataFrame({"id": ["a", "b"]})
    with pytest.raises(RunFormatError, match="unknown image_id"):
        ProbeSet("p", images, pd.DataFrame({"id": ["t"], "caption": ["x"], "image_id": ["zzz"]}))
    with pytest.raises(RunFormatError, match="no caption"):
        ProbeSet("p", images, pd.DataFrame({"id": ["t"], "caption": ["x"], "image_id": ["a"]}))
    with pytest.raises(RunFormatError, match="duplicate image id"):
        ProbeSet("p", pd.DataFrame({"id": ["a", "a"]}), pd.DataFrame({"id": ["t"], "caption": ["x"], "image_id": ["a"]}))
    with pytest.raises(ValueError, match="invalid probe name"):
        ProbeSet.from_pairs("../evil", captions=["x"])


# --- atomicity --------------------------------------------------------------------------------------
KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, numpy as np
    from spatial_disorder import RunWriter
    import spatial_disorder.run.writer as writer_mod

    real = writer_mod.write_npy_synced
    calls = {"n": 0}

    def slow(path, arr):
        calls["n"] += 1
        digest = real(path, arr)
        if calls["n"] == 2:            # first array of the new stage is on disk: die mid-stage
            print("ready", flush=True)
            import time; time.sleep(60)
        return digest

    writer_mod.write_npy_synced = slow
    w = RunWriter.open(sys.argv[1])
    big = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    w.write_stage("doomed", {"coco": {"image": big, "text": np.ones((20, 8), np.float32)},
                             "flickr": {"image": np.ones((4, 8)), "text": np.ones((4, 8))}})
    """
)


def test_writer_killed_mid_stage_leaves_readable_run(run_dir):
    before = open_run(run_dir).stages
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    run = open_run(run_dir)  # checksums verified
    assert run.stages == before
    leftovers = [p.name for p in (run_dir / "stages").iterdir()]
    assert any(name.startswith(".tmp-") for name in leftovers), "the killed writer should have been mid-stage"
    # the next writer cleans the orphan and appends normally
    w = RunWriter.open(run_dir)
    assert not any(name.startswith(".tmp-") for name in os.listdir(run_dir / "stages"))
    w.write_stage("after", {p: stage_arrays(run.probes[p]) for p in run.probe_names})
    assert open_run(run_dir).stages == [*before, "after"]


def test_orphan_stage_folder_not_in_manifest_is_ignored_then_replaced(run_dir):
    shutil.copytree(run_dir / "stages" / "stage0", run_dir / "stages" / "ghost")
    assert "ghost" not in open_run(run_dir).stages
    w = RunWriter.open(run_dir)
    assert not (run_dir / "stages" / "ghost").exists()
    run = open_run(run_dir)
    w.write_stage("ghost", {p: stage_arrays(run.probes[p]) for p in run.probe_names})
    assert open_run(run_dir).stages[-1] == "ghost"


# --- bad input: one clear line naming the file ------------------------------------------------------
def _break_missing_manifest(p):
    (p / "run.json").unlink()
    return "run.json", "manifest is missing"


def _break_malformed_json(p):
    (p / "run.json").write_text('{"format": "spatial-disorder-run", ')
    return "run.json", "malformed JSON"


def _break_unknown_version(p):
    doc = manifest(p)
    doc["format_version"] = 2
    save_manifest(p, doc)
    return "run.json", "unsupported run format version 2"


def _break_stage_missing(p):
    shutil.rmtree(p / "stages" / "stage1")
    return "stage1", "folder is missing"


def _break_array_missing(p):
    (p / "stages" / "stage1" / "coco" / "text.npy").unlink()
    return "text.npy", "array file is missing"


def _break_wrong_shape(p):
    np.save(p / "stages" / "stage1" / "coco" / "image.npy", np.ones((4, 9), np.float32))
    return "image.npy", "array has shape [4, 9], manifest says [4, 8]"


def _break_wrong_dtype(p):
    np.save(p / "stages" / "stage1" / "coco" / "image.npy", np.ones((4, 8), np.float64))
    return "image.npy", "dtype is float64"


def _break_row_count(p):
    doc = manifest(p)
    e = doc["stages"][1]["arrays"]["coco"]["image"]
    e["shape"] = [5, 8]
    np.save(p / "stages" / "stage1" / "coco" / "image.npy", np.ones((5, 8), np.float32))
    save_manifest(p, doc)
    return "image.npy", "5 rows in the manifest but probe 'coco' has 4 image rows"


def _break_checksum(p):
    arr = np.load(p / "stages" / "stage2" / "coco" / "image.npy")
    arr[0, 0] += 1
    np.save(p / "stages" / "stage2" / "coco" / "image.npy", arr)
    return "image.npy", "checksum mismatch"


def _break_truncated(p):
    f = p / "stages" / "stage1" / "coco" / "text.npy"
    f.write_bytes(f.read_bytes()[:-17])
    return "text.npy", "truncated"


def _break_not_npy(p):
    (p / "stages" / "stage1" / "coco" / "text.npy").write_bytes(b"garbage")
    return "text.npy", "not a valid .npy file"


def _break_escape_dotdot(p):
    doc = manifest(p)
    doc["stages"][0]["arrays"]["coco"]["image"]["path"] = "../outside.npy"
    save_manifest(p, doc)
    return "run.json", "escapes the run directory"


def _break_escape_absolute(p):
    doc = manifest(p)
    doc["probes"][0]["texts"] = "/etc/passwd"
    save_manifest(p, doc)
    return "run.json", "escapes the run directory"


def _break_escape_symlink(p):
    outside = p.parent / "outside"
    outside.mkdir()
    shutil.move(p / "probes" / "flickr", outside / "flickr")
    (p / "probes" / "flickr").symlink_to(outside / "flickr")
    return "run.json", "through a symlink"


def _break_probe_table(p):
    table = p / "probes" / "coco" / "texts.csv"
    table.write_text("id,caption\nx,y\n")
    doc = manifest(p)
    doc["probes"][0]["sha256"]["texts"] = sha256_file(table)  # a consistent but wrong table
    save_manifest(p, doc)
    return "texts.csv", "lacks required column"


BREAKERS = [
    _break_missing_manifest,
    _break_malformed_json,
    _break_unknown_version,
    _break_stage_missing,
    _break_array_missing,
    _break_wrong_shape,
    _break_wrong_dtype,
    _break_row_count,
    _break_checksum,
    _break_truncated,
    _break_not_npy,
    _break_escape_dotdot,
    _break_escape_absolute,
    _break_escape_symlink,
    _break_probe_table,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.removeprefix("_break_"))
def test_bad_run_gives_one_clear_line(run_dir, breaker, capsys):
    names_file, problem = breaker(run_dir)
    with pytest.raises(RunFormatError) as info:
        open_run(run_dir)
    message = str(info.value)
    assert "\n" not in message
    assert problem in message
    assert names_file in message
    # the command line says the same in one line on stderr, with exit status 2
    assert sd_main(["validate", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and problem in err


def test_checksums_hashed_side_by_side_name_the_first_bad_file_in_manifest_order(run_dir):
    """Several arrays are hashed at once; with two corrupted, the error names the one a file-by-file check meets first,
    whatever the number of hashing threads, and an intact run passes with any number of them."""
    from spatial_disorder.run.reader import check_checksums

    run = open_run(run_dir, check_sha256=False)
    files = [(e.path, e.sha256) for e in run._arrays.values()]
    for threads in (1, 2, 4):
        check_checksums(files, threads=threads)  # intact: no error
    first, later = files[1][0], files[-2][0]
    for path in (later, first):
        arr = np.load(path)
        arr[0, 0] += 1
        np.save(path, arr)
    for threads in (1, 2, 4):
        with pytest.raises(RunFormatError, match="checksum mismatch") as info:
            check_checksums(files, threads=threads)
        assert str(first) in str(info.value) and str(later) not in str(info.value)
    with pytest.raises(RunFormatError, match="checksum mismatch") as info:
        open_run(run_dir)
    assert str(first) in str(info.value)


def test_nan_rows_found_only_when_asked(run_dir, capsys):
    f = run_dir / "stages" / "stage1" / "coco" / "text.npy"
    arr = np.load(f)
    arr[7, 3] = np.inf
    np.save(f, arr)
    doc = manifest(run_dir)
    doc["stages"][1]["arrays"]["coco"]["text"]["sha256"] = sha256_file(f)
    save_manifest(run_dir, doc)
    open_run(run_dir)  # not asked: fine
    with pytest.raises(RunFormatError, match="row 7 contains NaN or inf") as info:
        open_run(run_dir, check_finite=True)
    assert "text.npy" in str(info.value)
    assert sd_main(["validate", "--finite", str(run_dir)]) == 2
    assert "row 7" in capsys.readouterr().err


def test_validate_cli_ok(run_dir, capsys):
    assert sd_main(["validate", str(run_dir)]) == 0
    assert "3 stages" in capsys.readouterr().out


def test_nothing_is_modified_by_reading(run_dir):
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    open_run(run_dir, check_finite=True).embeddings(0, "coco", "image")
    time.sleep(0.01)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_import_does_not_pull_torch():
    code = "import sys, spatial_disorder, spatial_disorder.cli; assert 'torch' not in sys.modules and 'open_clip' not in sys.modules and 'modx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_keep_the_user_umask(tmp_path, umask, mode):
    from spatial_disorder.atomic import atomic_write_bytes

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "gate.toml", b"x")
        probe = coco_like_probe()
        w = RunWriter.create(tmp_path / "run", metadata={"model": "tiny"})
        w.add_probe(probe)
        w.write_stage("s0", {"coco": stage_arrays(probe)}, meta={"phase": 0})
        (tmp_path / "ordinary.txt").write_text("x")
    finally:
        os.umask(old)
    written = [tmp_path / "gate.toml", tmp_path / "run" / "run.json", tmp_path / "run" / "stages" / "s0" / "meta.json"]
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written} == {
        str(p.relative_to(tmp_path)): oct(mode) for p in written}
    assert (tmp_path / "ordinary.txt").stat().st_mode & 0o777 == mode  # the same mode as a file written the ordinary way


@pytest.mark.parametrize("where", ["probe", "stage"])
@pytest.mark.parametrize("command", ["validate", "info"])
def test_reader_refuses_names_outside_the_documented_pattern(run_dir, where, command):
    """A manifest whose probe (or stage) is named 'val\\nerror: spoofed line' is bad input: exit 2, one line."""
    doc = json.loads((run_dir / "run.json").read_text())
    bad = "val\nerror: spoofed line"
    if where == "probe":
        old = doc["probes"][1]["name"]
        doc["probes"][1]["name"] = bad
        for stage in doc["stages"]:
            stage["arrays"][bad] = stage["arrays"].pop(old)
    else:
        doc["stages"][1]["name"] = bad
    (run_dir / "run.json").write_text(json.dumps(doc))
    out = subprocess.run([sys.executable, "-m", "spatial_disorder.cli", command, "run"], cwd=run_dir.parent,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "spoofed line" in out.stderr and f"not a valid {where} name" in out.stderr
    assert "\nerror: spoofed" not in out.stderr


def test_every_module_imports_where_torch_modx_and_open_clip_cannot():
    """Each spatial_disorder module imports in a process where importing torch, modx or open_clip raises."""
    code = """
import importlib, pkgutil, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "modx", "open_clip"):
            raise ImportError(f"{name} is not importable here")
        return None

sys.meta_path.insert(0, Refuse())
import spatial_disorder
names = [m.name for m in pkgutil.walk_packages(spatial_disorder.__path__, "spatial_disorder.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    import spatial_disorder

    n_files = sum(1 for p in Path(spatial_disorder.__file__).parent.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert int(out.stdout.strip()) >= n_files  # every module file was imported (packages counted too)
