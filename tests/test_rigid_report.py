"""The rigid-rotation figures as a reader sees them: plane angles beside the variance they carry, a reading that
says whether the change is a rotation, and a headline note that reconciles the two rotation figures."""

import json

import numpy as np
import pytest

from spatial_disorder.analysis import analyze_run
from spatial_disorder.report import make_report
from spatial_disorder.run import ProbeSet, open_run, write_run
from spatial_disorder.synthetic import clip_like_cloud, plane_rotation


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clip_like_run(tmp_path_factory):
    """A CLIP-like cloud (d = 64) whose main plane turns by 20 degrees at s1; at s2 it also changes shape."""
    n, d = 400, 64
    img, basis = clip_like_cloud(n, d, seed=0)
    txt = unit(img + 0.3 * clip_like_cloud(n, d, seed=1, basis=basis)[0])
    rng = np.random.default_rng(2)
    r = plane_rotation(basis[:, 1], basis[:, 2], 20.0)
    squash = np.eye(d) - 0.8 * np.outer(basis[:, 1], basis[:, 1])  # shrink the main direction: not a rotation
    noisy = lambda x: unit(x + 0.003 * rng.normal(size=x.shape))  # noqa: E731
    stages = {"s0": {"val": {"image": noisy(img), "text": noisy(txt)}},
              "s1": {"val": {"image": noisy(img @ r), "text": noisy(txt @ r)}},
              "s2": {"val": {"image": noisy(img @ squash), "text": noisy(txt @ squash)}}}
    ps = ProbeSet.from_pairs("val", [f"caption {i}" for i in range(n)])
    run = open_run(write_run(tmp_path_factory.mktemp("runs") / "clip", ps, stages, metadata={"model": "toy", "mode": "finetune"}))
    return run, analyze_run(run, k=5, consecutive=False)


def test_spectra_carry_each_planes_variance_share_and_the_subspace(clip_like_run):
    _, res = clip_like_run
    spec = res.spectra[(res.spectra.stage_b == "s1") & (res.spectra.kind == "image") & ~res.spectra.centred]
    assert spec["angle_deg"].iloc[0] == pytest.approx(20.0, abs=1.0)
    assert 0.05 < spec["variance_share"].iloc[0] < 1.0
    assert spec["variance_share"].sum() == pytest.approx(spec["variance_held"].iloc[0], abs=1e-6)
    dim = res.value("procrustes_dim", "s0", "s1", modality="image")
    assert 2 <= dim < 64 and (spec["dim"] == dim).all()
    assert res.value("intermodal_rotation_deg", "s0", "s1") <= 2.0


def test_rigid_share_tells_a_rotation_from_a_change_of_shape(clip_like_run):
    _, res = clip_like_run
    assert res.value("rigid_share", "s0", "s1", modality="image") > 0.8
    assert res.value("rigid_share", "s0", "s2", modality="image") < 0.5
    items = res.item_frame("s0", "s1", "val", "image")
    assert {"rigid_residual_deg", "rigid_share"} <= set(items.columns)
    assert (items["rigid_residual_deg"] <= items["rotation_deg"] + 1e-6).mean() > 0.9


def test_report_reading_and_headline_note(clip_like_run):
    run, res = clip_like_run
    report = make_report(res, run)
    fig = next(f for f in report.figures if f.key.startswith("procrustes_spectra"))
    assert "of the variance" in fig.reading and "change of shape" in fig.reading  # s0 -> s2 is a change of shape
    assert "rigid_share" in report.html and "Two rotation figures" in report.html
    doc = json.loads(json.dumps(report.metrics))
    names = {row["metric"] for row in doc["summary"]}
    assert {"procrustes_dim", "procrustes_variance_held", "rigid_share", "intermodal_rotation_dim"} <= names
