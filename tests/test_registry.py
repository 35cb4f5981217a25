"""The metric registry is the one place a metric is declared; the report only renders the analysis."""

import json

import numpy as np
import pandas as pd
import pytest

from spatial_disorder import knn
from spatial_disorder.analysis import analyze_run
from spatial_disorder.cli import main
from spatial_disorder.metrics.registry import FAMILIES, METRICS, SECTIONS, Family, MetricInfo, flagged, register, unregister
from spatial_disorder.report import compare_runs, make_report
from spatial_disorder.report.compare import compare_metrics
from spatial_disorder.report.tables import csv_tables, headline_metrics
from spatial_disorder.run import open_run
from spatial_disorder.run.reader import Run
from spatial_disorder.synthetic import make_synthetic_run


def _toy_pair(ctx):
    """Mean cosine between each caption and its image at stage b (a value known from the arrays alone)."""
    if ctx.cross:
        img, txt = ctx.unit(ctx.b, "image"), ctx.unit(ctx.b, "text")
        ctx.put("cross", "toy_paired_cosine_b", float(np.mean(np.sum(img[ctx.text_to_image] * txt, axis=1))))


TOY = Family("toy", "other", (
    MetricInfo("toy_paired_cosine_b", "cross", "cosine", "Mean caption-image cosine at stage b (a test metric).",
               "mean_j cos(b^T_j, b^I_{g(j)})", "lower", headline=True, compare=True),
), _toy_pair)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister("toy")
    assert "toy_paired_cosine_b" not in METRICS


def _expected(run, stage):
    probe = list(run.probes)[0]
    img = np.asarray(run.embeddings(stage, probe, "image"), dtype=np.float64)
    txt = np.asarray(run.embeddings(stage, probe, "text"), dtype=np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return float(np.mean(np.sum(img[run.probes[probe].text_to_image] * txt, axis=1)))


def test_builtin_families_declare_every_metric_once():
    names = [m.name for f in FAMILIES.values() for m in f.metrics]
    assert len(names) == len(set(names)) == len(METRICS)  # every registered metric belongs to exactly one family
    assert {f.section for f in FAMILIES.values()} <= set(SECTIONS)
    assert all(m.family and m.better in ("lower", "higher") for m in METRICS.values())
    assert "rotation_mean_deg" in headline_metrics() and "topology_pairs" not in {m.name for m in flagged("calibrate")}
    with pytest.raises(ValueError, match="already belongs to family"):
        register(Family("thief", "other", (METRICS["rotation_mean_deg"],)))


def test_toy_family_reaches_every_consumer(toy, tmp_path, monkeypatch):
    a = open_run(make_synthetic_run(tmp_path / "a", n_images=40, stages=3, d=16, noise=0.1))
    b = open_run(make_synthetic_run(tmp_path / "b", n_images=40, stages=3, d=16, noise=0.3, seed=0))
    analysis = analyze_run(a)
    last = analysis.stages[-1]
    assert analysis.value("toy_paired_cosine_b", stage_b=last) == pytest.approx(_expected(a, last), abs=1e-5)

    # metrics.json, the tidy CSV frames, the report's section table and headline
    report = make_report(analysis, a)
    out = report.write(tmp_path / "report")
    doc = json.loads((out / "metrics.json").read_text())
    assert any(r["metric"] == "toy_paired_cosine_b" for r in doc["summary"])
    assert doc["metrics"]["toy_paired_cosine_b"]["family"] == "toy" and doc["metrics"]["toy_paired_cosine_b"]["unit"] == "cosine"
    assert "toy_paired_cosine_b" in set(csv_tables(analysis)["summary"]["metric"])
    assert "toy_paired_cosine_b" in set(pd.read_csv(out / "tables" / "summary.csv")["metric"])
    html = report.html
    other = html[html.index("id='other'"):]
    assert "toy_paired_cosine_b" in other and "Mean caption-image cosine at stage b" in other
    assert "toy_paired_cosine_b" in report.summary_text

    # compare: a panel (the compare flag), a row and a definition
    assert ("toy_paired_cosine_b", "cross") in compare_metrics()
    cmp = compare_runs([a, b], [analysis, analyze_run(b)])
    assert "toy_paired_cosine_b" in set(cmp.summary["metric"])
    assert "toy_paired_cosine_b" in cmp.html  # the definitions table of the compared metrics

    # check: the gate accepts the name and judges it (the value is far below 2, far above -1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fail.toml").write_text('[[check]]\nmetric = "toy_paired_cosine_b"\nmin = 2.0\n')
    (tmp_path / "pass.toml").write_text('[[check]]\nmetric = "toy_paired_cosine_b"\nmin = -1.0\n')
    assert main(["check", str(a.path), "--thresholds", "pass.toml"]) == 0
    assert main(["check", str(a.path), "--thresholds", "fail.toml"]) == 1
    # calibration proposes a bound for it (flag calibrate)
    assert main(["check", str(a.path), "--calibrate", "--replicates", "2", "--write-thresholds", "proposed.toml"]) == 0
    assert 'metric = "toy_paired_cosine_b"' in (tmp_path / "proposed.toml").read_text()


def test_report_reads_only_the_analysis(tmp_path, monkeypatch):
    run = open_run(make_synthetic_run(tmp_path / "run", n_images=40, stages=3, d=16, noise=0.2))
    analysis = analyze_run(run)

    def forbidden(*args, **kwargs):
        raise AssertionError("the report must not search neighbours or read embeddings")

    for cls in [c for c in vars(knn).values() if isinstance(c, type) and issubclass(c, knn.Backend)]:
        for name in ("topk", "self_topk", "similarity_blocks", "similarity_tiles", "_search", "_matmul"):
            if name in vars(cls):
                monkeypatch.setattr(cls, name, forbidden)
    monkeypatch.setattr(knn, "get_backend", forbidden)
    monkeypatch.setattr(Run, "embeddings", forbidden)
    report = make_report(analysis, run)
    assert {"r1_heatmap_synthetic", "trajectories_synthetic", "flips_synthetic"} <= {f.key for f in report.figures}
    cmp = compare_runs([run, run], [analysis, analysis])
    assert len(cmp.summary)


def test_per_item_columns_must_be_declared_like_metrics(tmp_path):
    """A family's per-item column reaches RunAnalysis.items when the family declares it (Family.items), and a column no
    family declares fails where it is written, as an unregistered metric does."""
    run = open_run(make_synthetic_run(tmp_path / "r", n_images=30, stages=2, d=8, noise=0.1))

    def pair(ctx):
        if ctx.cross:
            img, txt = ctx.unit(ctx.b, "image"), ctx.unit(ctx.b, "text")
            ctx.item("cross", "toy_cosine_b", np.sum(img[ctx.text_to_image] * txt, axis=1))

    declared = Family("toy_items", "other", (), pair, {"toy_cosine_b": ("cross", "cosine")})
    register(declared)
    try:
        items = analyze_run(run).items
        cross = items[items["modality"] == "cross"]
        assert len(cross) and np.isfinite(cross["toy_cosine_b"].to_numpy(float)).all()
    finally:
        unregister("toy_items")
    register(Family("toy_items", "other", (), pair))  # the same column, undeclared
    try:
        with pytest.raises(KeyError, match="'toy_cosine_b' is not declared"):
            analyze_run(run)
    finally:
        unregister("toy_items")
