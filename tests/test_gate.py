"""The gate's pieces: thresholds parsing, evaluation, JUnit XML, GitHub escaping and summary, calibration."""

import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spatial_disorder.errors import InputError
from spatial_disorder.gate import (
    Comparison,
    Threshold,
    annotations,
    escape_data,
    escape_property,
    evaluate,
    exit_code,
    junit_xml,
    load_thresholds,
    markdown_summary,
    parse_thresholds,
    propose,
    to_toml,
)
from spatial_disorder.gate.calibrate import BAND_COLUMNS, analyse, identical, null_band, subsample
from spatial_disorder.gate.evaluate import unavailable
from spatial_disorder.metrics.registry import METRICS, value_range
from spatial_disorder.synthetic import uniform_rotation


def summary(rows):
    return pd.DataFrame(rows, columns=["probe", "modality", "metric", "value"])


SUMMARY = summary(
    [
        ("val", "image", "knn_overlap_mean", 0.7),
        ("val", "text", "knn_overlap_mean", 0.5),
        ("test", "image", "knn_overlap_mean", 0.9),
        ("val", "image", "rotation_mean_deg", 12.0),
        ("val", "text", "rotation_mean_deg", float("nan")),
        ("val", "cross", "intermodal_rotation_deg", 3.0),
    ]
)


# --- thresholds file ---------------------------------------------------------------------------------------
def test_parse_full_entry():
    (c,) = parse_thresholds('[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.6\nmax = 1\nprobe = "v*"\nmodality = "image"\nseverity = "warn"\nname = "nn"\n')
    assert c == Threshold("knn_overlap_mean", 0.6, 1.0, "v*", "image", "warn", "nn")


def test_defaults():
    (c,) = parse_thresholds('[[check]]\nmetric = "rotation_mean_deg"\nmax = 30\n')
    assert (c.probe, c.modality, c.severity, c.min, c.max) == ("*", "*", "fail", None, 30.0)


def test_unknown_metric_lists_valid_names():
    with pytest.raises(InputError) as err:
        parse_thresholds('[[check]]\nmetric = "rotation_avg"\nmax = 3\n', "gate.toml")
    msg = str(err.value)
    assert "gate.toml" in msg and "'rotation_avg'" in msg
    for name in ("rotation_mean_deg", "knn_overlap_mean", "i2t_R@1_delta"):
        assert name in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[[check]\nmetric = 1", "not valid TOML"),
        ('[[check]]\nmetric = "knn_overlap_mean"\n', "min' and/or 'max"),
        ('[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.9\nmax = 0.1\n', "greater than max"),
        ('[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.9\nseverity = "error"\n', "severity"),
        ('[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.9\nmodality = "cross"\n', "not 'cross'"),
        ('[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.9\nmodality = "audio"\n', "modality"),
        ('[[check]]\nmetric = "knn_overlap_mean"\nminimum = 0.9\n', "unknown key"),
        ('[[check]]\nmetric = "knn_overlap_mean"\nmin = "high"\n', "finite number"),
        ('[[check]]\nmetric = "knn_overlap_mean"\nmin = true\n', "finite number"),
        ('[[checks]]\nmetric = "knn_overlap_mean"\nmin = 0.5\n', "unknown top-level"),
        ("", "no [[check]]"),
    ],
)
def test_bad_files(text, needle):
    with pytest.raises(InputError, match=None) as err:
        parse_thresholds(text, "gate.toml")
    assert needle in str(err.value) and str(err.value).startswith("gate.toml")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_thresholds(tmp_path / "nope.toml")


def test_example_file_parses():
    from pathlib import Path

    checks = load_thresholds(Path(__file__).parents[1] / "experiments" / "gate.example.toml")
    assert checks and all(c.metric in METRICS for c in checks)


bounds = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))


@given(
    metric=st.sampled_from(sorted(m for m, info in METRICS.items() if info.gate)),  # only gateable metrics may be named
    lo=bounds,
    width=st.floats(0, 1e6, allow_nan=False),
    has_max=st.booleans(),
    probe=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12),
    severity=st.sampled_from(["fail", "warn"]),
    name=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12),
)
def test_toml_round_trip(metric, lo, width, has_max, probe, severity, name):
    hi = (lo if lo is not None else 0.0) + width if has_max or lo is None else None
    mod = METRICS[metric].modalities[0]
    c = Threshold(metric, lo, hi, probe, mod, severity, name)
    assert parse_thresholds(to_toml([c], "header\nline two")) == [c]


# --- evaluation --------------------------------------------------------------------------------------------
def test_pass_warn_fail_and_wildcards():
    checks = parse_thresholds(
        '[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.6\nprobe = "v*"\n'
        '[[check]]\nmetric = "rotation_mean_deg"\nmax = 10\nmodality = "image"\nseverity = "warn"\n'
    )
    res = evaluate(SUMMARY, checks)
    got = {(r.check.metric, r.probe, r.modality): r.status for r in res}
    assert got == {
        ("knn_overlap_mean", "val", "image"): "pass",  # 0.7 >= 0.6
        ("knn_overlap_mean", "val", "text"): "fail",  # 0.5 < 0.6
        ("rotation_mean_deg", "val", "image"): "warn",  # 12 > 10, warn only
    }
    assert exit_code(res) == 1
    assert exit_code([r for r in res if r.status != "fail"]) == 0


def test_bounds_are_inclusive():
    (c,) = parse_thresholds('[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.7\nmax = 0.7\nprobe = "val"\nmodality = "image"\n')
    (r,) = evaluate(SUMMARY, [c])
    assert r.status == "pass" and r.value == 0.7


def test_nan_and_unmatched_take_the_severity():
    checks = parse_thresholds(
        '[[check]]\nmetric = "rotation_mean_deg"\nmax = 90\nmodality = "text"\n'
        '[[check]]\nmetric = "knn_overlap_mean"\nmin = 0\nprobe = "nothing*"\nseverity = "warn"\n'
    )
    res = evaluate(SUMMARY, checks)
    assert [(r.status, r.value) for r in res] == [("fail", None), ("warn", None)]
    assert "NaN" in res[0].reason and "no value" in res[1].reason


def test_gate_check_on_a_metric_absent_from_the_summary_does_not_crash():
    # an image-only comparison has no cross-modal rows: the selection is empty (it used to raise KeyError 'modality')
    (c,) = parse_thresholds('[[check]]\nmetric = "t2i_R@1_delta"\nmin = -5\n')
    (r,) = evaluate(SUMMARY[SUMMARY["modality"] == "image"], [c])
    assert r.status == "fail" and r.value is None and "no value" in r.reason


def test_gate_unavailable_lists_checks_the_modalities_cannot_serve():
    checks = parse_thresholds(
        '[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.6\n'  # intra, any modality: image is enough
        '[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.6\nmodality = "text"\n'
        '[[check]]\nmetric = "flips_t2i_lost"\nmax = 0.2\n'
    )
    assert [i for i, _ in unavailable(checks, {"image"})] == [2, 3]
    assert unavailable(checks, {"image", "text", "cross"}) == []


# --- JUnit and GitHub -------------------------------------------------------------------------------------
def _results():
    checks = parse_thresholds(
        '[[check]]\nmetric = "knn_overlap_mean"\nmin = 0.6\nprobe = "val"\n'
        '[[check]]\nmetric = "intermodal_rotation_deg"\nmax = 1\nseverity = "warn"\n'
    )
    return evaluate(SUMMARY, checks)


def test_junit_parses_with_right_failures():
    root = ET.fromstring(junit_xml(_results()))
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == 3
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["knn_overlap_mean [val/text]"]
    assert root.find("testsuite").get("failures") == "1" and root.get("tests") == "3"
    warned = [c for c in cases if c.find("system-out") is not None]
    assert len(warned) == 1 and "intermodal_rotation_deg" in warned[0].find("system-out").text


def test_github_escaping_known_answers():
    assert escape_data("100%\r\nnext") == "100%25%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    assert escape_data("a:b,c") == "a:b,c"  # data keeps colons and commas


def test_annotations_one_per_problem_and_escaped():
    res = _results()
    lines = annotations(res, file="gate,v1.toml")
    assert [line.split(" ", 1)[0] for line in lines] == ["::error", "::warning"]
    assert lines[0].startswith("::error file=gate%2Cv1.toml,title=sd-analyze check%3A knn_overlap_mean [val/text]::")
    assert all("\n" not in line for line in lines)


def test_markdown_summary_escapes_data():
    c = Threshold("knn_overlap_mean", min=0.6, name="a|b <script>")
    res = evaluate(summary([("p|<x>", "image", "knn_overlap_mean", 0.1)]), [c])
    md = markdown_summary(res)
    assert "failed" in md.splitlines()[0]
    row = md.strip().splitlines()[-1]
    assert "<script>" not in md and "&lt;script&gt;" in row and "a\\|b" in row and "p\\|&lt;x&gt;" in row
    assert row.count(" | ") == 6  # seven cells: escaped pipes do not split the row


# --- calibration ------------------------------------------------------------------------------------------
def test_propose_puts_bounds_one_band_width_beyond_the_worse_edge():
    band = pd.DataFrame(
        [("val", "image", "rotation_mean_deg", 10.0, 9.0, 11.0, 21), ("val", "image", "knn_overlap_mean", 0.8, 0.7, 0.9, 21),
         ("val", "image", "topology_pairs", 5.0, 5.0, 5.0, 21)],
        columns=["probe", "modality", "metric", "observed", "lo", "hi", "n"],
    )
    got = {c.metric: c for c in propose(band, slack=1.0)}
    assert set(got) == {"rotation_mean_deg", "knn_overlap_mean"}  # bookkeeping metrics are skipped
    assert got["rotation_mean_deg"].max == pytest.approx(13.0) and got["rotation_mean_deg"].min is None
    assert got["knn_overlap_mean"].min == pytest.approx(0.5) and got["knn_overlap_mean"].max is None
    assert propose(band.iloc[[1]], slack=10.0) == []  # clipped to the range of a fraction, min 0 could never bind: dropped


def test_propose_never_tightens_a_zero_width_band():
    band = pd.DataFrame([("p", "image", "rotation_mean_deg", 10.0000001, 10.0000001, 10.0000001, 5),
                         ("p", "image", "knn_overlap_mean", 0.3333333, 0.3333333, 0.3333333, 5)],
                        columns=["probe", "modality", "metric", "observed", "lo", "hi", "n"])
    rot, nn = propose(band)
    assert 10.0000001 < rot.max <= 10.0201
    assert 0.3326 <= nn.min < 0.3333333


def test_subsample_keeps_captions_with_their_images():
    rng = np.random.default_rng(0)
    n, d = 30, 4
    img = rng.normal(size=(n, d))
    t2i = np.repeat(np.arange(n), 2)
    txt = img[t2i] * 10  # caption j is a scaled copy of its image: the pairing is visible in the values
    c = Comparison("p", {"image": img, "text": txt}, {"image": img + 1, "text": txt + 1}, t2i, "x")
    s = subsample(c, 0.5, np.random.default_rng(1))
    assert s.reference["image"].shape[0] == 15 and s.reference["text"].shape[0] == 30
    np.testing.assert_allclose(s.reference["text"], 10 * s.reference["image"][s.text_to_image])
    np.testing.assert_allclose(s.candidate["text"], 10 * (s.candidate["image"][s.text_to_image] - 1) + 1)
    assert not math.isnan(s.reference["image"].sum())


def band_row(metric, lo, hi, observed=None, identity=None, modality=None):
    obs = (lo + hi) / 2 if observed is None else observed
    mod = modality or METRICS[metric].modalities[0]
    same = (np.nan, np.nan) if identity is None else (identity, identity)
    return ("p", mod, metric, obs, lo, hi, 21, obs, obs, *same)


def test_calibrate_bound_accepts_identical_inputs():
    # every subsample shows captions moving closer to their images (a negative change): the bound one band width
    # above the band would be max = -0.1, which a model checked against itself (change 0) fails
    band = pd.DataFrame([band_row("paired_angle_change_mean_deg", -1.5, -0.8, identity=0.0),
                         band_row("i2t_R@1_delta", 4.0, 6.0, identity=0.0)], columns=BAND_COLUMNS)
    paired, r1 = propose(band)
    assert paired.max == pytest.approx(0.7) and paired.min is None  # one band width above identical inputs
    assert r1.min == pytest.approx(-2.0)  # an improving model: the bound still lets an unchanged one pass


def test_calibrate_bound_accepts_the_calibrated_comparison_outside_the_band():
    band = pd.DataFrame([band_row("rotation_mean_deg", 9.0, 11.0, observed=12.0, identity=0.0)], columns=BAND_COLUMNS)
    (rot,) = propose(band)
    assert rot.max == pytest.approx(14.0)  # the full comparison (12) is known good too: 12 + one width of 2


def test_calibrate_drops_bounds_that_cannot_bind_or_leave_the_range():
    band = pd.DataFrame([band_row("flips_i2t_gained", 0.01, 0.05, identity=0.0),  # min would be 0 - 0.04: clipped to 0
                         band_row("rotation_p90_deg", 150.0, 179.0, identity=0.0),  # max 208 > 180 degrees
                         band_row("flips_t2i_lost", 0.2, 0.6, identity=0.0),  # max 1.0: the whole range
                         band_row("procrustes_residual_frac", 0.2, 0.3, identity=None),  # NaN on identical inputs
                         band_row("knn_overlap_mean", 0.7, 0.9, identity=1.0)], columns=BAND_COLUMNS)
    skipped = []
    got = propose(band, skipped=skipped)
    assert [c.metric for c in got] == ["knn_overlap_mean"]
    assert [s[2] for s in skipped] == ["flips_i2t_gained", "rotation_p90_deg", "flips_t2i_lost", "procrustes_residual_frac"]
    assert "never bind" in skipped[0][3] and "NaN" in skipped[3][3]


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_value_range_is_ordered_and_holds_the_identical_input_value(metric):
    lo, hi = value_range(metric)
    assert lo < hi
    info = METRICS[metric]
    if info.bounds is not None:  # declared by the metric itself (geodesic norms over planes, gaps between unit vectors)
        assert (lo, hi) == info.bounds
    elif info.unit == "deg":
        assert (lo, hi) in ((0.0, 180.0), (-180.0, 180.0))
    elif info.unit in ("percent", "fraction", "0/1"):  # shares and recalls: no value outside [0, 1] or [0, 100]
        assert lo == 0.0 and hi == {"percent": 100.0}.get(info.unit, 1.0)
    assert np.isfinite(lo) or np.isfinite(hi)  # every registered metric is bounded on at least one side


def _calibration_case(seed, angle, shift, n=40, d=8):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, d))
    txt = img + 0.9 * rng.normal(size=(n, d))
    rot = uniform_rotation(d, angle)
    cand_txt = (1 - shift) * txt + shift * img  # captions move towards their images: paired angles shrink
    return Comparison("p", {"image": img, "text": txt}, {"image": img @ rot.T, "text": cand_txt @ rot.T}, np.arange(n), "ref -> cand")


@settings(max_examples=6)
@given(seed=st.integers(0, 10_000), angle=st.floats(0.5, 60.0), shift=st.floats(0.0, 0.6))
def test_calibrated_gate_passes_its_null_and_identical_inputs(seed, angle, shift):
    comp = _calibration_case(seed, angle, shift)
    checks = propose(null_band([[comp]], replicates=3, seed=seed, k=5))
    assert checks
    for case in (comp, identical(comp, "reference"), identical(comp, "candidate")):
        res = evaluate(analyse([case], k=5, seed=seed), checks)
        assert [r.line() for r in res if r.status != "pass"] == []
    for c in checks:
        lo, hi = value_range(c.metric)
        assert (c.min is None or lo < c.min <= hi) and (c.max is None or lo <= c.max < hi)
