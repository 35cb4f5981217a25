"""The JSON cleaner's table path and metrics.json's writer against the plain, slow definitions they replace."""

import json
import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from spatial_disorder.jsonutil import clean, records
from spatial_disorder.report.metrics_json import dumps


def reference_records(frame):
    """Row by row through ``clean``: the definition ``records`` must match."""
    return [clean(r) for r in frame.to_dict(orient="records")] if frame is not None and len(frame) else []


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.sampled_from([0.1 + 0.2, -0.0, 1e-300]))
texts = st.one_of(st.none(), st.text(max_size=6))


@settings(max_examples=60)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.lists(floats, min_size=n, max_size=n), st.lists(st.integers(-2**40, 2**40), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n), st.lists(texts, min_size=n, max_size=n))))
def test_records_match_cleaning_every_row(columns):
    f, i, b, t = columns
    frame = pd.DataFrame({"f": f, "f32": np.asarray(f, dtype=np.float64).clip(-1e38, 1e38).astype(np.float32), "i": i, "b": b, "t": pd.array(t, dtype="string"),
                          "o": pd.Series(t, dtype=object), "mixed": [np.float64(1.5), "x", None, np.int64(3)][: 1] * len(f)})
    got, want = records(frame), reference_records(frame)
    assert json.dumps(got, allow_nan=False) == json.dumps(want, allow_nan=False)
    assert all(v is None or math.isfinite(v) for row in got for v in (row["f"], row["f32"]))


def test_records_of_an_empty_or_missing_table():
    assert records(None) == [] and records(pd.DataFrame(columns=["a"])) == []


def test_metrics_json_has_one_table_row_per_line_and_reads_back_the_same():
    doc = {"schema": "x", "version": 2, "settings": {"k": 10, "note": "line\nbreak", "nested": {"a": [1, 2]}},
           "summary": [{"metric": "m", "value": 0.1 + 0.2}, {"metric": "n\n", "value": None}], "empty": [], "names": ["a", "b"],
           "metrics": {"m": {"unit": "deg"}}}
    text = dumps(doc).decode("utf-8")
    assert json.loads(text) == doc
    lines = text.splitlines()
    assert '    {"metric": "m", "value": 0.30000000000000004},' in lines  # every digit kept
    assert lines[0] == "{" and lines[-1] == "}" and '  "version": 2,' in lines and '    "k": 10,' in lines
    assert text == dumps(json.loads(text)).decode("utf-8")


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=5))
json_values = st.recursive(json_leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=12)


@settings(max_examples=80)
@given(json_values)
def test_strict_cleaning_is_the_identity_on_plain_json(value):
    """A run's metadata that is already plain JSON is written as it is, and reads back equal."""
    assert clean(value, strict=True) == value
    assert json.loads(json.dumps(clean(value, strict=True), allow_nan=False)) == value


def test_strict_cleaning_unwraps_numpy_and_paths_and_refuses_what_json_cannot_hold():
    from pathlib import Path

    value = {"lr": np.float32(0.5), "steps": np.int64(7), "sizes": np.array([1, 2]), "where": Path("runs") / "a", 3: (1, 2)}
    assert clean(value, strict=True) == {"lr": 0.5, "steps": 7, "sizes": [1, 2], "where": str(Path("runs") / "a"), "3": [1, 2]}
    for bad, error in ((float("nan"), ValueError), ({"x": [np.float64("inf")]}, ValueError), ({"x": object()}, TypeError)):
        try:
            clean(bad, strict=True)
        except error:
            pass
        else:
            raise AssertionError(f"{bad!r} was accepted")
    # the report's cleaner writes the same values as null and text instead
    assert clean({"x": [float("nan")], "y": object}) == {"x": [None], "y": str(object)}


def test_run_metadata_goes_through_the_one_cleaner(tmp_path):
    import pytest

    from spatial_disorder.run import ProbeSet, RunWriter, open_run

    w = RunWriter.create(tmp_path / "run", metadata={"lr": np.float32(0.25), "shape": np.array([2, 3])})
    w.add_probe(ProbeSet.from_pairs("p", ["a", "b"]))
    w.write_stage("s0", {"p": {"image": np.eye(2, 4, dtype=np.float32), "text": np.eye(2, 4, dtype=np.float32)}}, meta={"loss": np.float64(1.5)})
    run = open_run(tmp_path / "run")
    assert run.metadata["lr"] == 0.25 and run.metadata["shape"] == [2, 3] and run.stage_meta("s0")["loss"] == 1.5
    with pytest.raises(ValueError, match="not a finite number"):
        RunWriter.create(tmp_path / "nan", metadata={"lr": float("nan")})
    assert not (tmp_path / "nan").exists()
    # refused before an existing run is replaced: nothing is lost
    with pytest.raises(TypeError, match="not JSON serialisable"):
        RunWriter.create(tmp_path / "run", metadata={"callback": print}, overwrite=True)
    assert open_run(tmp_path / "run").metadata["lr"] == 0.25
