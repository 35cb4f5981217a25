"""The report: files written, readings from planted drift, metrics.json schema, HTML escaping, comparison, flips."""

import io
import json
import sys
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import jsonschema
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spatial_disorder.analysis import analyze_run
from spatial_disorder.errors import InputError
from spatial_disorder.report import compare_runs, make_report, write_folder
from spatial_disorder.report import figures as F
from spatial_disorder.report.metrics_json import json_schema
from spatial_disorder.run import ProbeSet, open_run, write_run
from spatial_disorder.synthetic import uniform_rotation as plane_rotation


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted_run(path, thetas=(0.0, 10.0, 25.0), n=40, d=8, captions=None, metadata=None, shuffle_last=False, seed=0, probe="val"):
    rng = np.random.default_rng(seed)
    img = unit(rng.normal(size=(n, d)))
    txt = unit(img + 0.2 * rng.normal(size=(n, d)))
    captions = captions or [f"caption {i}" for i in range(n)]
    ps = ProbeSet.from_pairs(probe, captions)
    stages = {}
    for t, theta in enumerate(thetas):
        r = plane_rotation(d, theta)
        ti = txt @ r.T
        if shuffle_last and t == len(thetas) - 1:
            ti = np.roll(ti, 1, axis=0)  # caption j now sits where caption j-1 sat: every text->image hit is lost
        stages[f"s{t}"] = {probe: {"image": unit(img @ r.T), "text": unit(ti)}}
    return open_run(write_run(path, ps, stages, metadata=metadata or {"model": "toy", "mode": "finetune"}))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    run = planted_run(tmp_path_factory.mktemp("runs") / "planted")
    analysis = analyze_run(run)
    return run, analysis, make_report(analysis, run)


def test_report_writes_every_file(planted, tmp_path):
    run, analysis, report = planted
    out = report.write(tmp_path / "report")
    assert (out / "index.html").is_file() and (out / "metrics.json").is_file()
    assert (out / "tables" / "summary.csv").is_file() and (out / "tables" / "items.csv").is_file()
    keys = {f.key for f in report.figures}
    for key in ("retrieval_val", "r1_heatmap_val", "rotation_hist_val", "rotation_stages_val", "procrustes_spectra_val",
                "trajectories_val", "overlap_stages_val", "rotation_scatter_val", "paired_angle_val", "flips_val", "topology_val"):
        assert key in keys, key
        ET.parse(out / "figures" / f"{key}.svg")  # well-formed SVG, embedded in the page too
        assert f"id='fig-{key}'><img" in (out / "index.html").read_text()
    assert not list((out / "figures").glob("*.png"))  # PNG only on request
    csv = pd.read_csv(out / "tables" / "summary.csv")
    assert len(csv) == len(analysis.summary)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_per_item_tables_hold_the_report_pair_unless_every_pair_is_asked_for(planted):
    run, analysis, report = planted
    items, paired = pd.read_csv(io.BytesIO(report.files()["tables/items.csv"])), pd.read_csv(io.BytesIO(report.files()["tables/paired.csv"]))
    assert set(zip(items["stage_a"], items["stage_b"])) == {("s0", "s2")}
    assert len(items) == int(((analysis.items["stage_a"] == "s0") & (analysis.items["stage_b"] == "s2")).sum()) > 0
    assert set(paired["stage"]) == {"s0", "s2"}
    every = make_report(analysis, run, all_items=True).files()
    items_all = pd.read_csv(io.BytesIO(every["tables/items.csv"]))
    assert len(items_all) == len(analysis.items)
    assert set(zip(items_all["stage_a"], items_all["stage_b"])) == {("s0", "s1"), ("s0", "s2"), ("s1", "s2")}
    assert set(pd.read_csv(io.BytesIO(every["tables/paired.csv"]))["stage"]) == {"s0", "s1", "s2"}


def test_readings_state_the_planted_rotation(planted):
    run, analysis, report = planted
    hist = next(f for f in report.figures if f.key == "rotation_hist_val")
    # every vector turns by exactly 25 degrees from s0 to s2
    assert "image embeddings rotate by 25.0° on average (90th percentile 25.0°)" in hist.reading
    assert "text embeddings rotate by 25.0°" in hist.reading
    assert "rotate by 25.0° on average" in report.html
    scatter = next(f for f in report.figures if f.key == "rotation_scatter_val")
    assert "differ by 0.0° on average" in scatter.reading
    assert "stage s0 → s2" in report.summary_text.replace("->", "→")


def test_metrics_json_follows_its_schema(planted, tmp_path):
    run, analysis, report = planted
    out = report.write(tmp_path / "r")
    doc = json.loads((out / "metrics.json").read_text())
    jsonschema.validate(doc, json_schema())
    assert doc["schema"] == "spatial-disorder-metrics" and doc["version"] == 2
    assert doc["run"]["stages"] == ["s0", "s1", "s2"] and doc["run"]["probes"]["val"] == {"n_images": 40, "n_texts": 40}
    rot = [r for r in doc["summary"] if r["metric"] == "rotation_mean_deg" and r["stage_a"] == "s0" and r["stage_b"] == "s1"]
    assert [round(r["value"], 4) for r in rot] == [10.0, 10.0]
    assert doc["metrics"]["rotation_mean_deg"]["worse_when"] == "higher"
    assert doc["metrics"]["rotation_mean_deg"]["headline"] is True and doc["metrics"]["topology_pairs"]["calibrate"] is False
    # the cross-stage matrix and the trajectories the report draws are in metrics.json
    assert len(doc["cross_stage"]) == 9 and len(doc["trajectories"]) == len(analysis.trajectories) > 0
    r1 = {r["stage"]: r["value"] for r in doc["retrieval"] if r["direction"] == "i2t" and r["metric"] == "R@1"}
    diag = {r["image_stage"]: r["value"] for r in doc["cross_stage"] if r["image_stage"] == r["text_stage"]}
    assert diag == pytest.approx(r1)  # all 40 images queried: the diagonal is ordinary retrieval, computed another way


def test_html_escapes_every_data_value(tmp_path):
    evil = "<script>alert(1)</script>"
    run = planted_run(
        tmp_path / "evil",
        captions=[f"{evil} {i} & co" for i in range(40)],
        metadata={"model": "<img src=x onerror=alert(2)>", "mode": "a&b", "attribution": "Photos <b>CC</b>", "license": "CC-BY-4.0 <i>"},
        shuffle_last=True,
    )
    html = make_report(analyze_run(run), run).html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 0 &amp; co" in html  # the caption is shown, as text
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "Photos &lt;b&gt;CC&lt;/b&gt;" in html and "CC-BY-4.0 &lt;i&gt;" in html
    assert "default-src 'none'" in html  # no network: a strict content security policy


def _brute_t2i_top1(run, stage):
    img = np.asarray(run.embeddings(stage, "val", "image"), dtype=np.float64)
    txt = np.asarray(run.embeddings(stage, "val", "text"), dtype=np.float64)
    return np.argmax(txt @ img.T, axis=1) == np.arange(len(txt))  # one caption per image: caption j <-> image j


def test_flipped_items_known_answer(tmp_path):
    run = planted_run(tmp_path / "flip", d=16, shuffle_last=True)
    fl = analyze_run(run).flipped_items("val", "s0", "s2")
    hit_a, hit_b = _brute_t2i_top1(run, "s0"), _brute_t2i_top1(run, "s2")
    assert hit_a.sum() > 30 and hit_b.sum() < 5  # the shuffle really destroys text->image retrieval
    lost = fl[(fl["direction"] == "t2i") & (fl["change"] == "lost")]
    gained = fl[(fl["direction"] == "t2i") & (fl["change"] == "gained")]
    assert sorted(lost["row"]) == list(np.flatnonzero(hit_a & ~hit_b))
    assert sorted(gained["row"]) == list(np.flatnonzero(~hit_a & hit_b))
    assert (lost["rank_a"] == 1).all() and (lost["rank_b"] > 1).all()
    row = int(lost["row"].iloc[0])
    assert lost.set_index("row").loc[row, "caption"] == f"caption {row}"


def test_png_written_on_request(planted, tmp_path):
    run, analysis, report = planted
    out = make_report(analysis, run, png=True).write(tmp_path / "png")
    pngs = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert pngs == sorted(p.stem for p in (out / "figures").glob("*.svg")) == sorted(f.key for f in report.figures)
    assert all((out / "figures" / f"{k}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for k in pngs)
    assert (out / "index.html").read_text().count("data:image/svg+xml;base64,") == len(pngs)  # the page embeds the SVGs


def test_compare_side_by_side(tmp_path):
    a = planted_run(tmp_path / "base", thetas=(0.0, 10.0, 25.0))
    b = planted_run(tmp_path / "modx", thetas=(0.0, 5.0, 40.0))
    rep = compare_runs([a, b], [analyze_run(a), analyze_run(b)])
    s = rep.summary
    row = s[(s["metric"] == "rotation_mean_deg") & (s["modality"] == "image") & (s["stage_a"] == 0) & (s["stage_b"] == 2)].iloc[0]
    assert row["base"] == pytest.approx(25.0, abs=1e-3) and row["modx"] == pytest.approx(40.0, abs=1e-3)
    assert row["modx - base"] == pytest.approx(15.0, abs=1e-3)
    out = rep.write(tmp_path / "cmp")
    assert (out / "index.html").is_file() and (out / "tables" / "compare_summary.csv").is_file()
    assert any(p.suffix == ".svg" for p in (out / "figures").iterdir())


def test_compare_refuses_different_probe_sets(tmp_path):
    a = planted_run(tmp_path / "a")
    b = planted_run(tmp_path / "b", probe="other")
    with pytest.raises(InputError, match="probe sets differ"):
        compare_runs([a, b], [analyze_run(a), analyze_run(b)])
    c = planted_run(tmp_path / "c", n=41)
    with pytest.raises(InputError, match="different image items"):
        compare_runs([a, c], [analyze_run(a), analyze_run(c)])


def test_write_folder_replaces_reports_only(tmp_path):
    out = write_folder(tmp_path / "rep", {"index.html": b"one", "tables/a.csv": b"x"})
    write_folder(out, {"index.html": b"two"})
    assert (out / "index.html").read_bytes() == b"two" and not (out / "tables").exists()
    data = tmp_path / "precious"
    data.mkdir()
    (data / "thesis.tex").write_text("keep me")
    with pytest.raises(InputError, match="refusing to replace"):
        write_folder(data, {"index.html": b"x"})
    assert (data / "thesis.tex").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "rep"]


# --- figure helpers on hand-made frames -----------------------------------------------------------------------
def _frames():
    summary = pd.DataFrame(
        [("a", "b", "p", "image", "rotation_mean_deg", 31.0), ("a", "c", "p", "image", "rotation_mean_deg", 40.0),
         ("b", "c", "p", "image", "rotation_mean_deg", 12.0), ("a", "c", "p", "text", "rotation_mean_deg", 20.0)],
        columns=["stage_a", "stage_b", "probe", "modality", "metric", "value"],
    )
    items = pd.DataFrame(
        {"stage_a": "a", "stage_b": "c", "probe": "p", "modality": ["image", "image", "text", "text", "text"],
         "row": [0, 1, 0, 1, 2], "id": list("xyuvw"), "rotation_deg": [10.0, 20.0, 12.0, 18.0, 30.0]}
    )
    return SimpleNamespace(summary=summary, items=items, retrieval=pd.DataFrame(columns=["stage", "probe", "direction", "metric", "value"]),
                           spectra=None, paired=None, meta={"stages": ["a", "b", "c"]}, stages=["a", "b", "c"])


def test_pair_matrix_fills_computed_pairs_only():
    m = F.pair_matrix(_frames().summary, "rotation_mean_deg", "p", "image", ["a", "b", "c"])
    expected = np.array([[np.nan, 31, 40], [31, np.nan, 12], [40, 12, np.nan]])
    np.testing.assert_array_equal(m, expected)
    m = F.pair_matrix(_frames().summary, "rotation_mean_deg", "p", "text", ["a", "b", "c"], symmetric=False)
    assert np.isnan(m).sum() == 8 and m[0, 2] == 20


def test_scatter_reading_from_hand_made_items():
    fig = F.rotation_scatter(_frames(), "p", "a", "c", np.array([0, 1, 1]))
    # captions -> images 0, 1, 1: |12-10|, |18-20|, |30-20| = 2, 2, 10 -> mean 4.67; above the diagonal (12>10, 30>20): 2 of 3
    assert "differ by 4.7° on average (67% of captions rotate more than their image)" in fig.reading
    assert F.rotation_scatter(_frames(), "p", "a", "b", None) is None  # no items for that pair


def test_a_dense_scatter_is_one_image_in_its_svg_and_a_sparse_one_stays_vector(monkeypatch):
    monkeypatch.setattr(F, "RASTER_POINTS", 2)  # the hand-made frames hold 3 captions
    dense = F.rotation_scatter(_frames(), "p", "a", "c", np.array([0, 1, 1]))
    monkeypatch.setattr(F, "RASTER_POINTS", 3)
    sparse = F.rotation_scatter(_frames(), "p", "a", "c", np.array([0, 1, 1]))
    assert dense.figure.axes[0].collections[0].get_rasterized() and not sparse.figure.axes[0].collections[0].get_rasterized()
    svg = {name: F.render_figure(f)["svg"] for name, f in (("dense", dense), ("sparse", sparse))}
    assert b"<image" in svg["dense"] and b"<image" not in svg["sparse"]


@settings(max_examples=200, deadline=None)
@given(value=st.floats(0.0, 100.0), spread=st.sampled_from([0.0, 1e-13, 0.3, 40.0]))
def test_a_percentage_heatmaps_colour_scale_stays_between_0_and_100(value, spread):
    top = min(100.0, value + spread)
    lo, hi = F.constant_scale(value, top, (0.0, 100.0))
    assert 0.0 <= lo <= value and top <= hi <= 100.0
    if top - value < 1e-12:
        assert hi - lo == pytest.approx(1.0)  # a constant still gets a scale one unit wide
    else:
        assert (lo, hi) == (value, top)


def test_a_cross_stage_matrix_at_100_percent_gets_a_scale_that_ends_at_100():
    fig = F.stage_heatmaps({"R@1": np.full((3, 3), 100.0)}, list("abc"), "k", "retrieval", "t", "R@1 (%)", "r",
                           limits=(0.0, 100.0))
    assert fig.figure.axes[0].images[0].get_clim() == (99.0, 100.0)
    angles = F.stage_heatmaps({"deg": np.zeros((3, 3))}, list("abc"), "k", "rotation", "t", "deg", "r")
    assert angles.figure.axes[0].images[0].get_clim() == (0.0, 1.0)  # unbounded quantities keep a scale from the value up


def test_heatmap_reading_names_the_worst_pair():
    fig = F.rotation_stages(_frames(), "p", "a")
    assert "largest mean rotation between two analysed stages is 40.0° (image embeddings, a → c)" in fig.reading


def _pair_summary(pairs, stages="abcdef"):
    """A summary with a rotation and an overlap value for each of ``pairs`` (both modalities), and its stages."""
    rows = [(a, b, "p", m, metric, v) for a, b in pairs for m in ("image", "text")
            for metric, v in (("rotation_mean_deg", 10.0 * abs(stages.index(b) - stages.index(a))),
                              ("knn_overlap_mean", 1 - 0.1 * abs(stages.index(b) - stages.index(a))))]
    summary = pd.DataFrame(rows, columns=["stage_a", "stage_b", "probe", "modality", "metric", "value"])
    return SimpleNamespace(summary=summary, meta={"k": 10}, k=10, stages=list(stages))


def test_default_pairs_are_drawn_as_lines_and_other_pairs_as_a_heatmap():
    from spatial_disorder.analysis import default_pairs

    stages = list("abcdef")
    default = _pair_summary(default_pairs(stages))  # 5 against a, 4 more consecutive: all on the lines
    every = _pair_summary([(a, b) for i, a in enumerate(stages) for b in stages[i + 1:]])  # (b, d) and others are not
    mid = _pair_summary(default_pairs(stages, ref="c"))  # against c, in either order, and consecutive
    assert F.on_the_lines(default.summary, "rotation_mean_deg", "p", stages, "a")
    assert not F.on_the_lines(every.summary, "rotation_mean_deg", "p", stages, "a")
    assert F.on_the_lines(mid.summary, "rotation_mean_deg", "p", stages, "c")
    assert not F.on_the_lines(mid.summary, "rotation_mean_deg", "p", stages, "a")  # (c, e) is neither
    for frames, ref, heatmap in ((default, "a", False), (every, "a", True), (mid, "c", False), (mid, "a", True)):
        fig = F.rotation_stages(frames, "p", ref)
        images = fig.figure.axes[0].get_images()
        assert bool(images) == heatmap and ("stage × stage" in fig.title) == heatmap, fig.title
        assert ("Grey cells" in fig.reading) == heatmap
    lines = {line.get_label(): line.get_ydata() for line in F.rotation_stages(mid, "p", "c").figure.axes[0].get_lines()}
    np.testing.assert_allclose(lines["image: against c"], [20.0, 10.0, 0.0, 10.0, 20.0, 30.0])  # (a, c) read as (c, a)


def test_pair_lines_plot_every_stage_against_the_reference_and_the_previous_stage():
    stages = list("abcdef")
    frames = _pair_summary([("a", s) for s in stages[1:]] + [("c", "d")])
    fig = F.overlap_stages(frames, "p", "a")
    lines = {line.get_label(): line.get_ydata() for line in fig.figure.axes[0].get_lines()}
    np.testing.assert_allclose(lines["image: against a"], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5])  # 1 at the reference itself
    # (a, b) is also the first consecutive pair; (c, d) the only other one analysed
    np.testing.assert_allclose(lines["text: previous stage"], [np.nan, 0.9, np.nan, 0.9, np.nan, np.nan])
    assert "lowest neighbour overlap is 0.50 (image embeddings, a → f)" in fig.reading
    assert fig.key == "overlap_stages_p" and fig.section == "neighbours"
    assert F.overlap_stages(_pair_summary([]), "p", "a") is None


def test_figures_drawn_in_worker_processes_are_the_ones_drawn_here(planted):
    """The report draws its figures in forked workers where it can: same figures, same order, same bytes, same page."""
    run, analysis, _ = planted
    here, workers = make_report(analysis, run, workers=1), make_report(analysis, run, workers=2)
    assert [f.key for f in here.figures] == [f.key for f in workers.figures] and len(here.figures) >= 8
    assert [f.reading for f in here.figures] == [f.reading for f in workers.figures]
    a, b = here.files(), workers.files()
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if k.startswith("figures/")) and a["index.html"] == b["index.html"]
    assert all(f.figure is None for f in workers.figures)  # encoded, then freed


_SHARED_WITH_POOL: dict = {}


def _figure_keys_in_a_daemonic_worker(_):
    return [f.key for f in make_report(_SHARED_WITH_POOL["analysis"], _SHARED_WITH_POOL["run"]).figures]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="figures are drawn in worker processes on Linux only")
def test_a_report_made_inside_a_pool_worker_draws_its_figures_there(planted):
    """A multiprocessing pool's worker is daemonic and may not start processes: the report must draw in-process there
    (a user analysing runs in parallel), not fail."""
    import multiprocessing

    run, analysis, report = planted
    _SHARED_WITH_POOL.update(run=run, analysis=analysis)
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            keys = pool.map(_figure_keys_in_a_daemonic_worker, [0])[0]
    finally:
        _SHARED_WITH_POOL.clear()
    assert keys == [f.key for f in report.figures]


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["m1", "m2"]), st.sampled_from([0, 1, "s2"]), st.floats(allow_nan=True)),
                     max_size=12),
       query=st.tuples(st.sampled_from(["m1", "m2", "m3"]), st.sampled_from([0, 1, "1", "s2"])))
def test_lookup_reads_what_a_filter_of_the_frame_reads(rows, query):
    frame = pd.DataFrame(rows, columns=["metric", "stage", "value"])
    sel = frame[(frame["metric"].astype(str) == str(query[0])) & (frame["stage"].astype(str) == str(query[1]))] if len(frame) else frame
    want = float(sel["value"].iloc[0]) if len(sel) else float("nan")
    got = F.lookup(frame, ("metric", "stage"))(*query)
    assert got == want or (np.isnan(got) and np.isnan(want))  # the first matching row, keys compared as text


def test_sampled_retrieval_is_drawn_with_its_intervals(tmp_path):
    """Fast mode's R@K carry 95% intervals and the page draws them (bars, and their width in the readings); an exact
    analysis of the same run has none to draw, and says the cross-stage cells have no sampling error."""
    from spatial_disorder.synthetic import make_synthetic_run

    run = open_run(make_synthetic_run(tmp_path / "r", n_images=450, captions_per_image=1, d=16, stages=3, rotation_deg=(5.0, 9.0),
                                      noise=0.6, seed=3))
    fast = analyze_run(run, fast=True, fast_queries=200)
    exact = analyze_run(run)  # 450 images: every cell queries them all
    probe = fast.probe_names[0]
    fig = F.retrieval_lines(fast, probe)
    r = fast.retrieval[fast.retrieval["metric"].str.startswith("R@")]
    widest = float((r["ci_high"] - r["ci_low"]).max())
    assert f"Bars: 95% intervals of the sampled queries (at most {widest:.1f} points wide)." in fig.reading
    bars = [c for ax in fig.figure.axes for c in ax.collections if len(c.get_segments())]
    assert sum(len(c.get_segments()) for c in bars) == len(r)  # one bar per sampled R@K (stages x directions x K)
    heat = F.r1_heatmap(fast, probe)
    cs = fast.cross_stage
    lo, hi = f"{float((cs.ci_high - cs.ci_low).min()):.1f}", f"{float((cs.ci_high - cs.ci_low).max()):.1f}"
    assert f"their 95% intervals are {lo if lo == hi else f'{lo}-{hi}'} points wide" in heat.reading
    fig_exact = F.retrieval_lines(exact, probe)
    assert "Bars" not in fig_exact.reading and not any(len(c.get_segments()) for ax in fig_exact.figure.axes for c in ax.collections)
    assert "(every image: no sampling error)" in F.r1_heatmap(exact, probe).reading
