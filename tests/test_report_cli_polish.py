"""What a newcomer reads in the report and on the terminal: readings that follow the numbers, one unit per metric,
legends beside the curves, no empty tables announced, and one clear error line for inputs sd-analyze cannot use."""

import re

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from spatial_disorder.analysis import analyze_run
from spatial_disorder.cli import main
from spatial_disorder.report import figures as F
from spatial_disorder.report.html import Section, section_html
from spatial_disorder.run import ProbeSet, open_run, write_run
from spatial_disorder.synthetic import uniform_rotation as plane_rotation


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def toy_run(path, thetas=(0.0, 10.0, 25.0), n=40, d=8, noise=0.2, shuffle_last=False, seed=0):
    """Captions close to their images (``noise``), every stage turned by ``thetas`` degrees; ``shuffle_last``
    moves every caption to its neighbour's image at the last stage (every text-to-image top-1 hit is lost)."""
    rng = np.random.default_rng(seed)
    img = unit(rng.normal(size=(n, d)))
    txt = unit(img + noise * rng.normal(size=(n, d)))
    stages = {}
    for t, theta in enumerate(thetas):
        r = plane_rotation(d, theta)
        ti = np.roll(txt, 1, axis=0) if shuffle_last and t == len(thetas) - 1 else txt
        stages[f"s{t}"] = {"val": {"image": unit(img @ r.T), "text": unit(ti @ r.T)}}
    return write_run(path, ProbeSet.from_pairs("val", [f"caption {i}" for i in range(n)]), stages, metadata={"model": "toy"})


def report_html(run_path, out) -> str:
    assert main([str(run_path), "--out", str(out)]) == 0
    return (out / "index.html").read_text(encoding="utf-8")


def sections(html: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"<section id='([^']+)'>(.*?)</section>", html, re.S)}


# --- the lost-captions table -------------------------------------------------------------------------------
def test_report_lost_captions_table_never_reads_first_20_of_0(tmp_path):
    html = report_html(toy_run(tmp_path / "steady"), tmp_path / "r1")  # a pure rotation: no caption loses its image
    assert "first 20 of 0" not in html and "top-1 hit was lost" not in html
    html = report_html(toy_run(tmp_path / "shuffled", shuffle_last=True), tmp_path / "r2")  # every hit at s0 is lost
    n_lost = int(re.search(r"top-1 hit was lost, s0 → s2 \(val; first 20 of (\d+)\)", html).group(1))
    assert n_lost > 20 and len(re.findall(r"<td>caption \d+</td>", html)) == 20


# --- sections ----------------------------------------------------------------------------------------------
def test_report_section_with_a_table_but_no_figure_has_no_no_values_note():
    import pandas as pd

    with_table = section_html(Section("other", "Other metrics", tables=[("Values", pd.DataFrame({"metric": ["m"], "value": [1.0]}))]))
    assert "No figure" not in with_table and "<table>" in with_table
    assert "the analysis holds no values" in section_html(Section("empty", "Empty"))


def test_report_page_never_says_no_values_above_a_table_of_values(tmp_path):
    for anchor, body in sections(report_html(toy_run(tmp_path / "run"), tmp_path / "r")).items():
        assert not ("holds no values" in body and "<table>" in body), anchor


# --- retrieval figure --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shuffled_analysis(tmp_path_factory):
    return analyze_run(open_run(toy_run(tmp_path_factory.mktemp("runs") / "shuffled", shuffle_last=True)))


def test_retrieval_legend_does_not_cover_the_curves(shuffled_analysis):
    fig = F.retrieval_lines(shuffled_analysis, "val").figure
    FigureCanvasAgg(fig).draw()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for legend in legends:
        box = legend.get_window_extent()
        assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)


# --- flips: one unit ---------------------------------------------------------------------------------------
def test_flips_figure_shows_shares_like_the_tables(shuffled_analysis):
    lost = F.summary_value(shuffled_analysis.summary, "flips_t2i_lost", "val", "cross", "s1", "s2")
    r1 = shuffled_analysis.retrieval
    hits = r1[(r1["stage"] == "s1") & (r1["direction"] == "t2i") & (r1["metric"] == "R@1")]["value"].iloc[0]
    assert lost == pytest.approx(hits / 100) and lost > 0.5  # every caption that was a hit at s1 loses it at s2
    fig = F.flips_bars(shuffled_analysis, "val")
    heights = [abs(p.get_height()) for p in fig.figure.axes[0].patches]
    assert max(heights) == pytest.approx(lost)  # the bar is the table's value, not 100 times it
    assert "%" not in fig.reading and f"{lost:.3f} of captions lose their top-1 hit" in fig.reading
    assert "%" not in fig.figure.axes[0].get_ylabel()


# --- cross-stage compatibility ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "diag, off, chance, expected",
    [
        ([2.0, 2.2], [1.9, 2.0], 0.67, "too weak (chance is 0.67%)"),  # 2% R@1 on 150 images: nothing to judge
        ([2.0, 2.2], [1.9, 2.0], None, "too weak to tell"),
        ([80.0, 82.0], [79.0, 81.0], 0.1, "(99% of the weakest within-stage value), so embeddings from different stages remain compatible"),
        ([80.0, 82.0], [60.0, 81.0], 0.1, "(75% of the weakest within-stage value), so old and new embeddings are only partly compatible"),
        ([80.0, 82.0], [20.0, 81.0], 0.1, "(25% of the weakest within-stage value), so old and new embeddings are not compatible"),
    ],
)
def test_cross_stage_reading_follows_the_numbers(diag, off, chance, expected):
    text = F.compatibility_reading(np.array(diag), np.array(off), chance)
    assert expected in text
    if "too weak" in expected:
        assert "remain compatible" not in text and "partly" not in text and "not compatible" not in text


def test_cross_stage_reading_at_chance_level_in_the_report(tmp_path):
    # captions unrelated to their images: R@1 is at chance (2.5% on 40 images) at every stage
    html = report_html(toy_run(tmp_path / "random", noise=50.0), tmp_path / "r")
    reading = re.search(r"<figure id='fig-r1_heatmap_val'>.*?<div class='reading'>(.*?)</div>", html, re.S).group(1)
    assert "too weak (chance is 2.5%)" in reading and "remain compatible" not in reading


# --- command line ------------------------------------------------------------------------------------------
def test_analyze_single_stage_run_exits_2_with_one_line(tmp_path, capsys):
    run = toy_run(tmp_path / "one", thetas=(0.0,))
    assert main([str(run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run}: the run holds one stage ('s0')") and "at least two" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert main(["compare", str(run), str(run), "--out", str(tmp_path / "c")]) == 2
    assert "holds one stage" in capsys.readouterr().err


def test_analyze_unknown_probe_names_the_run(tmp_path, capsys):
    run = toy_run(tmp_path / "run")
    assert main([str(run), "--probe", "nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run}: unknown probe set(s) ['nope']") and "'val'" in err and len(err.splitlines()) == 1
