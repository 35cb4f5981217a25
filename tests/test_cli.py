"""`sd-analyze` end to end: exit codes, files written, --out, compare, and every mode of the gate."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from spatial_disorder.cli import main
from spatial_disorder.gate import load_thresholds
from spatial_disorder.run import ProbeSet, RunWriter, write_run
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
    assert list((rep / "tables").glob("*.csv")) and list((rep / "figures").glob("*.svg"))
    assert not list((rep / "figures").glob("*.png"))  # PNG only with --png
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


def test_all_items_writes_every_pair_of_per_item_values(runs, tmp_path):
    import pandas as pd

    for flag, pairs in (([], {("s0", "s2")}), (["--all-items"], {("s0", "s1"), ("s0", "s2"), ("s1", "s2")})):
        out = tmp_path / f"rep{len(flag)}"
        assert main([str(runs["a"]), "--out", str(out), *flag]) == 0
        items = pd.read_csv(out / "tables" / "items.csv")
        assert set(zip(items["stage_a"], items["stage_b"])) == pairs


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


def _two_set_run(path, thetas):
    """Two probe sets (``val``, ``extra``) over the same planted rotations."""
    img, txt = base_arrays()
    rot = {t: plane_rotation(8, th) for t, th in enumerate(thetas)}
    sets = [ProbeSet.from_pairs(name, [f"{name} caption {i}" for i in range(len(img))]) for name in ("val", "extra")]
    stages = {f"s{t}": {p.name: {"image": unit(img @ r.T), "text": unit(txt @ r.T)} for p in sets} for t, r in rot.items()}
    return write_run(path, sets, stages, metadata={"model": "toy"})


def _key_table(html, heading):
    """The rows of the table under ``<h3>heading</h3>`` (empty when the heading is missing)."""
    part = html.split(f"<h3>{heading}</h3>", 1)
    return [] if len(part) == 1 else re.findall(r"<tr>", part[1].split("</table>", 1)[0].split("<tbody>", 1)[1])


def test_compare_honours_ref_and_probe(tmp_path, capsys):
    a, b = _two_set_run(tmp_path / "a", (0.0, 10.0, 25.0)), _two_set_run(tmp_path / "b", (0.0, 12.0, 40.0))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--ref", "1", "--probe", "val", "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert "probe sets val" in capsys.readouterr().out
    # every run against its own stage 1: the key table and the figures' readings are about stage 1, and not empty
    assert _key_table(html, "Stage 1 → 2") and "Stage 0 → 2" not in html
    assert "Mean rotation against stage 1 by the last stage: image: a " in html
    # only the asked probe set is drawn and listed
    assert "fig-compare_metrics_val" in html and "fig-compare_metrics_extra" not in html and "(extra)" not in html
    assert "<th>probe sets</th><td>val</td>" in html
    # the same by stage name, found in the first run and taken by position
    assert main(["compare", str(a), str(b), "--ref", "s1", "--out", str(tmp_path / "named")]) == 0
    named = (tmp_path / "named" / "index.html").read_text()
    assert _key_table(named, "Stage 1 → 2") and "fig-compare_metrics_extra" in named


@pytest.mark.parametrize("argv, needle", [(["--ref", "7"], "out of range"), (["--ref", "nope"], "no stage 'nope'"),
                                          (["--probe", "nope"], "no probe set 'nope'")])
def test_compare_bad_ref_or_probe_exit_2_with_one_line(runs, tmp_path, capsys, argv, needle):
    assert main(["compare", str(runs["a"]), str(runs["b"]), *argv, "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err
    assert not (tmp_path / "cmp").exists()


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


# --- check: outputs, errors and the README's CI example --------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def readme_ci_command() -> list[str]:
    """The sd-analyze command of the README's GitHub Actions example, continuation lines joined, as argv."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Gate a model update in CI.*?```yaml\n(.*?)```", text, re.S).group(1)
    command = re.search(r"(sd-analyze check .*?)(?:\n(?!\s*-)|$)", block.replace("\\\n", " "), re.S).group(1)
    return shlex.split(command)


def write_small_run(path, angle):
    img, txt = base_arrays()
    probe = ProbeSet.from_pairs("val", [f"caption {i}" for i in range(len(img))])
    w = RunWriter.create(path, metadata={"model": "toy"})
    w.add_probe(probe)
    for name, th in (("stage0", 0.0), ("stage1", angle)):
        w.write_stage(name, {"val": {"image": unit(img @ plane_rotation(8, th).T), "text": unit(txt @ plane_rotation(8, th).T)}})


def sd_analyze_argv(argv):
    """How a user runs the installed command (the console script, else the module)."""
    script = shutil.which("sd-analyze", path=str(Path(sys.executable).parent))
    return ([script] if script else [sys.executable, "-m", "spatial_disorder.cli"]) + argv[1:]


def test_gate_readme_github_actions_example_runs_as_written(tmp_path):
    argv = readme_ci_command()
    assert argv[:2] == ["sd-analyze", "check"] and "reports/sd-gate.xml" in argv
    # a fresh checkout: the example thresholds, two runs, no reports/ folder
    (tmp_path / "experiments").mkdir()
    shutil.copy(ROOT / "experiments" / "gate.example.toml", tmp_path / "experiments")
    write_small_run(tmp_path / "runs" / "baseline", 3.0)
    write_small_run(tmp_path / "runs" / "candidate", 5.0)
    summary = tmp_path / "step_summary.md"
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    env.pop("SD_ANALYZE_TRACEBACK", None)
    proc = subprocess.run(sd_analyze_argv(argv), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    # the candidate turns 2 degrees further than the baseline: every check of the example passes
    passed = [line for line in proc.stdout.splitlines() if line.startswith("PASS ")]
    assert proc.stdout.endswith(f"PASSED: {len(passed)} passed, 0 warnings, 0 failed\n") and len(passed) >= 6
    root = ET.parse(tmp_path / "reports" / "sd-gate.xml").getroot()
    assert root.get("tests") == str(len(passed)) and root.get("failures") == "0"
    assert "✅ passed" in summary.read_text(encoding="utf-8")


def test_gate_junit_creates_missing_folder(runs, tmp_path, capsys, monkeypatch):
    summary = tmp_path / "ci" / "summary" / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.chdir(tmp_path)
    fail = thresholds(tmp_path, ROTATION_MAX.format(max=24.5, sev="fail"), "fail.toml")
    assert main(["check", str(runs["a"]), "--thresholds", fail, "--junit", "reports/nested/sd-gate.xml"]) == 1
    assert ET.parse(tmp_path / "reports" / "nested" / "sd-gate.xml").getroot().get("failures") == "1"
    assert "❌ failed" in summary.read_text(encoding="utf-8")
    assert main(["check", str(runs["a"]), "--candidate", "s1", "--calibrate", "--replicates", "2", "--write-thresholds",
                 "gates/new/gate.toml"]) == 0
    assert load_thresholds(tmp_path / "gates" / "new" / "gate.toml")


def test_gate_unwritable_junit_exits_2_not_1(runs, tmp_path, capsys):
    (tmp_path / "taken.xml").mkdir()  # the output path is a folder
    ok = thresholds(tmp_path, ROTATION_MAX.format(max=25.5, sev="fail"))
    assert main(["check", str(runs["a"]), "--thresholds", ok, "--junit", str(tmp_path / "taken.xml")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error:") and "taken.xml" in err and "cannot write" in err and len(err.splitlines()) == 1
    assert "PASSED" not in captured.out  # no verdict is printed for outputs that were not written


def test_gate_unexpected_error_exits_2_with_one_line(runs, tmp_path, capsys, monkeypatch):
    import spatial_disorder.gate as gate

    def broken(*args, **kwargs):
        raise RuntimeError("something unforeseen\nsecond line")

    monkeypatch.delenv("SD_ANALYZE_TRACEBACK", raising=False)
    monkeypatch.setattr(gate, "analyse", broken)
    ok = thresholds(tmp_path, ROTATION_MAX.format(max=25.5, sev="fail"))
    assert main(["check", str(runs["a"]), "--thresholds", ok]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: RuntimeError: something unforeseen") and len(err.splitlines()) == 1


def test_gate_one_modality_arrays(tmp_path, capsys):
    img, _ = base_arrays()
    np.save(tmp_path / "a.npy", img)
    a = str(tmp_path / "a.npy")
    example = str(ROOT / "experiments" / "gate.example.toml")
    # the example thresholds hold cross-modal checks: image arrays alone cannot serve them (bad input, not drift)
    assert main(["check", "--ref-image", a, "--cand-image", a, "--thresholds", example]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {example}: check(s) #3 (rotation_mismatch_mean_deg") and len(err.splitlines()) == 1
    assert "#1" not in err and "#2" not in err  # the intra-modal checks are fine on image arrays
    image_only = thresholds(tmp_path, OVERLAP + ROTATION_MAX.format(max=0.5, sev="fail"))
    assert main(["check", "--ref-image", a, "--cand-image", a, "--thresholds", image_only]) == 0
    assert "PASSED: 2 passed" in capsys.readouterr().out
