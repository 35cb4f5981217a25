"""`sd-analyze` end to end: exit codes, files written, --out, compare, and every mode of the gate."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from spatial_disorder.cli import main
from spatial_disorder.gate import load_thresholds
from spatial_disorder.run import ProbeSet, write_run
from spatial_disorder.synthetic import uniform_rotation as plane_rotation


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def base_arrays(n=40, d=8, seed=0):
    rng = np.random.default_rng(seed)
    img = unit(rng.normal(size=(n, d)))
    return img, unit(img + 0.2 * rng.normal(size=(n, d)))


def make_run(path, thetas=(0.0, 10.0, 25.0), probe="val", seed=0):
    img, txt = base_arrays(seed=seed)
    stages = {f"s{t}": {probe: {"image": unit(img @ plane_rotation(8, th).T), "text": unit(txt @ plane_rotation(8, th).T)}}
              for t, th in enumerate(thetas)}
    return write_run(path, ProbeSet.from_pairs(probe, [f"caption {i}" for i in range(len(img))]), stages, metadata={"model": "toy"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"a": make_run(root / "a"), "b": make_run(root / "b", thetas=(0.0, 12.0, 40.0)), "other": make_run(root / "o", probe="other")}


def thresholds(tmp_path, text, name="gate.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


ROTATION_MAX = '[[check]]\nmetric = "rotation_mean_deg"\nmax = {max}\nmodality = "image"\nseverity = "{sev}"\n'
OVERLAP = '[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.99\n'  # a rotation keeps every neighbour


# --- sd-analyze RUN_DIR -----------------------------------------------------------------------------------
def test_analyze_writes_report_into_the_run(runs, capsys):
    assert main([str(runs["a"]), "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert "rotation_mean_deg" in out and "report:" in out
    rep = runs["a"] / "report"
    assert (rep / "index.html").is_file() and (rep / "metrics.json").is_file()
    assert list((rep / "tables").glob("*.csv")) and list((rep / "figures").glob("*.png")) and list((rep / "figures").glob("*.svg"))
    assert json.loads((rep / "metrics.json").read_text())["settings"]["k"] == 5


def test_out_is_honoured_and_options_pass_through(runs, tmp_path):
    out = tmp_path / "elsewhere"
    assert main([str(runs["b"]), "--out", str(out), "--ref", "s1", "--probe", "val", "--backend", "numpy", "--fast"]) == 0
    assert (out / "index.html").is_file() and not (runs["b"] / "report").exists()
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["settings"]["backend"] == "numpy" and doc["settings"]["fast"] is True
    pairs = {(r["stage_a"], r["stage_b"]) for r in doc["summary"]}
    assert ("s1", "s0") in pairs or ("s0", "s1") in pairs
    assert ("s1", "s2") in pairs


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["{tmp}/missing"], "does not exist"),
        (["{a}", "--probe", "nope"], "nope"),
        (["{a}", "--ref", "s9"], "s9"),
        (["{a}", "--k", "0"], "--k"),
        (["{a}", "--backend", "warp-drive"], "warp-drive"),
    ],
)
def test_analyze_bad_input_exits_2_with_one_line(runs, tmp_path, capsys, argv, needle):
    argv = [a.format(tmp=tmp_path, a=runs["a"]) for a in argv]
    assert main(argv + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["compare", "only-one"]) == 2
    assert main(["check", "--bogus"]) == 2


def test_info_and_validate_still_work(runs, capsys):
    assert main(["info", str(runs["a"])]) == 0
    assert "stages   3: s0, s1, s2" in capsys.readouterr().out
    assert main(["validate", str(runs["a"])]) == 0


# --- compare ------------------------------------------------------------------------------------------------
def test_compare_two_runs(runs, tmp_path, capsys):
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "cmp")]) == 0
    html = (tmp_path / "cmp" / "index.html").read_text()
    assert "a vs b" in html
    assert (tmp_path / "cmp" / "tables" / "compare_summary.csv").is_file()


def test_compare_refuses_different_probe_sets(runs, tmp_path, capsys):
    assert main(["compare", str(runs["a"]), str(runs["other"]), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "probe sets differ" in err and not (tmp_path / "cmp").exists()


# --- check: stages of a run ---------------------------------------------------------------------------------
def test_check_pass_warn_fail(runs, tmp_path, capsys):
    # s0 -> s2 turns every item by exactly 25 degrees
    ok = thresholds(tmp_path, ROTATION_MAX.format(max=25.5, sev="fail") + OVERLAP)
    assert main(["check", str(runs["a"]), "--ref", "0", "--candidate", "-1", "--thresholds", ok]) == 0
    out = capsys.readouterr().out
    assert "PASS  rotation_mean_deg [val/image] = 25" in out and "PASSED: 3 passed, 0 warnings, 0 failed" in out

    warn = thresholds(tmp_path, ROTATION_MAX.format(max=24.5, sev="warn"), "warn.toml")
    assert main(["check", str(runs["a"]), "--thresholds", warn]) == 0
    assert "WARN  rotation_mean_deg [val/image] = 25" in capsys.readouterr().out

    fail = thresholds(tmp_path, ROTATION_MAX.format(max=24.5, sev="fail") + OVERLAP, "fail.toml")
    assert main(["check", str(runs["a"]), "--thresholds", fail]) == 1
    out = capsys.readouterr().out
    assert "FAIL  rotation_mean_deg [val/image]" in out and "1 failed" in out
    # the first stage pair only turns by 10 degrees: the same thresholds pass
    assert main(["check", str(runs["a"]), "--candidate", "s1", "--thresholds", fail]) == 0


def test_check_bad_thresholds_exit_2(runs, tmp_path, capsys):
    bad = thresholds(tmp_path, "[[check]\n", "bad.toml")
    assert main(["check", str(runs["a"]), "--thresholds", bad]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    unknown = thresholds(tmp_path, '[[check]]\nmetric = "spin_deg"\nmax = 1\n', "unknown.toml")
    assert main(["check", str(runs["a"]), "--thresholds", unknown]) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'spin_deg'" in err and "knn_overlap_mean" in err and "rotation_mean_deg" in err
    assert main(["check", str(runs["a"])]) == 2
    assert "--thresholds FILE is required" in capsys.readouterr().err
    assert main(["check", str(runs["a"]), "--reference", str(runs["b"]), "--thresholds", unknown]) == 2


def test_check_junit_and_github(runs, tmp_path, capsys, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    fail = thresholds(tmp_path, ROTATION_MAX.format(max=24.5, sev="fail") + OVERLAP, "fail.toml")
    junit = tmp_path / "out" / "junit.xml"
    junit.parent.mkdir()
    assert main(["check", str(runs["a"]), "--thresholds", fail, "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("::error ")]
    assert len(errors) == 1 and "title=sd-analyze check%3A rotation_mean_deg [val/image]::FAIL" in errors[0]
    root = ET.parse(junit).getroot()
    failed = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert failed == ["rotation_mean_deg [val/image]"] and len(list(root.iter("testcase"))) == 3
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "❌ failed" in text and "| fail | rotation_mean_deg | val | image | 25 |" in text


# --- check: two runs, bare arrays ---------------------------------------------------------------------------
def test_check_two_runs_same_stage(runs, tmp_path, capsys):
    # last stages: a turned by 25, b by 40 from the same start: b's last stage is 15 degrees from a's
    t = thresholds(tmp_path, ROTATION_MAX.format(max=15.5, sev="fail"))
    assert main(["check", "--reference", str(runs["a"]), "--candidate", str(runs["b"]), "--thresholds", t]) == 0
    assert "= 15" in capsys.readouterr().out
    t = thresholds(tmp_path, ROTATION_MAX.format(max=14.5, sev="fail"), "strict.toml")
    assert main(["check", "--reference", str(runs["a"]), "--candidate", str(runs["b"]), "--thresholds", t]) == 1
    assert main(["check", "--reference", str(runs["a"]), "--candidate", str(runs["other"]), "--thresholds", t]) == 2


def test_check_arrays(tmp_path, capsys):
    img, txt = base_arrays()
    files = {}
    for name, arr in (("ri", img), ("rt", txt), ("ci", unit(img @ plane_rotation(8, 7.0).T)), ("ct", unit(txt @ plane_rotation(8, 7.0).T))):
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], arr)
    t = thresholds(tmp_path, ROTATION_MAX.format(max=7.5, sev="fail") + '[[check]]\nmetric = "rotation_mismatch_mean_deg"\nmax = 0.01\n')
    argv = ["check", "--ref-image", str(files["ri"]), "--ref-text", str(files["rt"]), "--cand-image", str(files["ci"]), "--cand-text",
            str(files["ct"]), "--thresholds", t]
    assert main(argv) == 0
    assert "rotation_mean_deg [arrays/image] = 7" in capsys.readouterr().out
    np.save(tmp_path / "short.npy", img[:10])
    assert main(argv[:-4] + ["--cand-text", str(tmp_path / "short.npy"), "--thresholds", t]) == 2
    assert "short.npy" in capsys.readouterr().err
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    assert main(argv[:2] + [str(tmp_path / "junk.npy")] + argv[3:]) == 2
    assert "junk.npy" in capsys.readouterr().err


def test_calibrate_proposes_thresholds_that_accept_the_reference(runs, tmp_path, capsys):
    out = tmp_path / "proposed.toml"
    argv = ["check", str(runs["a"]), "--candidate", "s1", "--calibrate", "--replicates", "4", "--write-thresholds", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    checks = load_thresholds(out)
    assert printed == out.read_text()
    rot = [c for c in checks if c.metric == "rotation_mean_deg" and c.modality == "image"]
    assert len(rot) == 1 and 10.0 <= rot[0].max < 10.5  # s0 -> s1 turns every item by exactly 10 degrees, in every subsample
    # the calibrated gate passes the comparison it was calibrated on and fails a much larger drift
    assert main(["check", str(runs["a"]), "--candidate", "s1", "--thresholds", str(out)]) == 0
    assert main(["check", str(runs["a"]), "--candidate", "s2", "--thresholds", str(out)]) == 1


def test_calibrate_with_a_null_run(runs, tmp_path, capsys):
    assert main(["check", "--reference", str(runs["a"]), "--candidate", str(runs["b"]), "--stage", "1", "--null", str(runs["b"]),
                 "--calibrate", "--replicates", "2"]) == 0
    assert "[[check]]" in capsys.readouterr().out
