"""Set-by-set analysis with figures drawn meanwhile (spatial_disorder/pipeline.py) gives the report of one whole analysis."""

import json
import multiprocessing
import os
import threading
from concurrent.futures import Future

import pandas as pd
import pytest

from spatial_disorder import pipeline as P
from spatial_disorder.analysis import FRAME_FIELDS, RunAnalysis, analyze_run
from spatial_disorder.cli import main
from spatial_disorder.errors import InputError
from spatial_disorder.report import make_report, render
from spatial_disorder.run import ProbeSet, open_run, write_run
from spatial_disorder.synthetic import drifted_stages, structured_embeddings

BOOKKEEPING = ("timing_s", "total_s")  # the only settings that differ between one analysis and its parts


@pytest.fixture(scope="module")
def three_sets(tmp_path_factory):
    """Three probe sets of different sizes and drifts; the second is learned at stage 1 (so the continual table's
    "all" rows average over sets with and without a task)."""
    stages: dict = {}
    probes = []
    for p, (name, n, caps, deg) in enumerate((("old", 40, 2, 12.0), ("new", 30, 3, 4.0), ("held", 25, 1, 20.0))):
        img, txt, t2i = structured_embeddings(n, caps, 16, seed=10 + p)
        arrays, _, _ = drifted_stages(img, txt, 4, (deg, deg / 2), (deg / 3,), noise=0.05, seed=p)
        for t, (i, x) in enumerate(arrays):
            stages.setdefault(f"s{t}", {})[name] = {"image": i, "text": x}
        probes.append(ProbeSet.from_captions(name, pd.DataFrame({"id": [f"{name}{i}" for i in range(n)]}),
                                             [[f"{name} caption {c} of {i}" for c in range(caps)] for i in range(n)]))
    path = write_run(tmp_path_factory.mktemp("pipe") / "run", probes, stages, metadata={"model": "toy", "learned_at": {"new": 1}})
    return open_run(path)


@pytest.mark.parametrize("fast", [False, True])
def test_combining_the_sets_analyses_gives_the_analysis_of_every_set(three_sets, fast):
    run = three_sets
    whole = analyze_run(run, fast=fast, fast_queries=20, backend="numpy")
    joined = RunAnalysis.combine([analyze_run(run, probes=[p], fast=fast, fast_queries=20, backend="numpy") for p in run.probes])
    for name in FRAME_FIELDS:
        pd.testing.assert_frame_equal(getattr(joined, name), getattr(whole, name), check_exact=True, obj=name)
    assert {k: v for k, v in joined.meta.items() if k not in BOOKKEEPING} == {k: v for k, v in whole.meta.items() if k not in BOOKKEEPING}
    assert joined.probe_names == list(run.probes) and set(joined.text_to_image) == set(run.probes)
    assert (whole.continual["probe"] == "all").any()  # the rows combine has to compute again


def test_combine_refuses_parts_that_overlap_or_disagree(three_sets):
    run = three_sets
    old = analyze_run(run, probes=["old"], backend="numpy")
    with pytest.raises(ValueError, match="share probe sets"):
        RunAnalysis.combine([old, old])
    with pytest.raises(ValueError, match="setting 'k'"):
        RunAnalysis.combine([old, analyze_run(run, probes=["new"], k=3, backend="numpy")])


def test_the_pipelined_report_is_the_report_of_the_whole_analysis(three_sets, monkeypatch):
    run = three_sets
    added = []
    real_add = render.FigureDrawer.add
    monkeypatch.setattr(render.FigureDrawer, "add", lambda self, a, more=False: (added.append((a.probe_names, more)), real_add(self, a, more))[1])
    done = P.analyze_and_report(run, backend="numpy", workers=2)
    if render.can_fork():  # one set at a time, each drawn while the next one is analysed
        assert added == [(["old"], True), (["new"], True), (["held"], False)]
    reference = make_report(analyze_run(run, backend="numpy"), run, workers=1)
    assert [f.key for f in done.report.figures] == [f.key for f in reference.figures]
    assert done.report.rendered == reference.rendered  # byte for byte
    got, want = done.report.files(), reference.files()
    assert set(got) == set(want)
    for name in got:
        if name.startswith("tables/"):
            assert got[name] == want[name], name
    doc, ref_doc = json.loads(got["metrics.json"]), json.loads(want["metrics.json"])
    for d in (doc, ref_doc):
        d.pop("created")
        for key in BOOKKEEPING:
            d["settings"].pop(key)
    assert doc == ref_doc
    assert done.analysis_s > 0 and done.report_s > 0


@pytest.mark.parametrize("fails", [False, True])
def test_matplotlib_loaded_beside_a_single_analysis_changes_nothing_and_leaves_no_thread(three_sets, monkeypatch, fails):
    """One probe set (or several large ones) is analysed first and drawn after; matplotlib is loaded meanwhile in a
    thread, joined before the report forks its workers. If loading fails there, the report loads it itself."""
    loaded = []

    def warm_up():
        loaded.append(threading.current_thread().name)
        if fails:
            raise RuntimeError("planted")

    monkeypatch.setattr(render, "warm_up", warm_up)
    done = P.analyze_and_report(three_sets, probes=["old"], backend="numpy", workers=2)
    assert loaded == ["load-matplotlib"]
    assert not [t for t in threading.enumerate() if t.name == "load-matplotlib"]
    reference = make_report(analyze_run(three_sets, probes=["old"], backend="numpy"), three_sets, workers=1)
    assert done.report.rendered == reference.rendered


def test_a_drawer_stops_its_workers_when_the_caller_fails(three_sets):
    if not render.can_fork():
        pytest.skip("figures are drawn in worker processes only where they can be forked")
    part = analyze_run(three_sets, probes=["old"], backend="numpy")
    with pytest.raises(RuntimeError, match="analysis failed"):
        with render.FigureDrawer(part.ref, part.stages[-1], 3, workers=2) as drawer:
            drawer.add(part, more=True)
            assert multiprocessing.active_children()
            raise RuntimeError("analysis failed")  # e.g. the next set's arrays are unreadable
    assert drawer._pool is None and not multiprocessing.active_children()


def test_make_report_refuses_a_drawer_made_for_another_report(three_sets):
    analysis = analyze_run(three_sets, backend="numpy")
    drawer = render.FigureDrawer("s1", analysis.stages[-1], len(analysis.probe_names), workers=1)
    with pytest.raises(ValueError, match="drawer was made for stages s1"):
        make_report(analysis, three_sets, drawer=drawer)


def test_cli_writes_png_on_request_and_still_accepts_the_old_svg_flag(three_sets, tmp_path):
    assert main([str(three_sets.path), "--backend", "numpy", "--png", "--out", str(tmp_path / "png")]) == 0
    figures = tmp_path / "png" / "figures"
    assert sorted(p.stem for p in figures.glob("*.png")) == sorted(p.stem for p in figures.glob("*.svg")) != []
    assert main([str(three_sets.path), "--backend", "numpy", "--svg", "--out", str(tmp_path / "svg")]) == 0
    assert list((tmp_path / "svg" / "figures").glob("*.svg")) and not list((tmp_path / "svg" / "figures").glob("*.png"))


@pytest.mark.parametrize("option", [["--ref", "s9"], ["--probe", "old", "--probe", "missing"]])
def test_bad_options_of_a_several_set_run_give_one_error_line_before_any_analysis(three_sets, tmp_path, capsys, option):
    assert main([str(three_sets.path), "--backend", "numpy", *option, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and option[-1] in err[0]
    assert not (tmp_path / "r").exists()


def test_a_worker_that_dies_costs_time_not_the_report(three_sets, monkeypatch, capsys):
    if not render.can_fork():
        pytest.skip("figures are drawn in worker processes only where they can be forked")
    analysis = analyze_run(three_sets, backend="numpy")
    reference = make_report(analysis, three_sets, workers=1)
    parent = os.getpid()
    real = render.FIGURES[3]

    def dies_in_a_worker(*args):  # as a worker killed for memory would: no exception, no result
        if os.getpid() != parent:
            os._exit(1)
        return real(*args)

    monkeypatch.setattr(render, "FIGURES", render.FIGURES[:3] + (dies_in_a_worker,) + render.FIGURES[4:])
    report = make_report(analysis, three_sets, workers=2)
    assert "a worker process died" in capsys.readouterr().err
    assert [f.key for f in report.figures] == [f.key for f in reference.figures]
    assert report.rendered == reference.rendered
    assert not multiprocessing.active_children()


def _same_report(done, reference):
    assert [f.key for f in done.figures] == [f.key for f in reference.figures]
    assert done.rendered == reference.rendered


def test_figures_taken_back_from_the_workers_queue_are_the_ones_they_would_draw(three_sets):
    if not render.can_fork():
        pytest.skip("figures are drawn in worker processes only where they can be forked")
    analysis = analyze_run(three_sets, backend="numpy")
    reference = make_report(analysis, three_sets, workers=1)
    with render.FigureDrawer(analysis.ref, analysis.stages[-1], len(analysis.probe_names), workers=2).start() as drawer:
        drawer.add(analysis)
        queued = list(drawer._futures)
        drawer.draw_until(Future())  # never done: every figure no worker has started is drawn here
        here = [new is not old for new, old in zip(drawer._futures, queued)]
        assert any(here) and not all(here)  # the workers took the first ones; this process drew the rest it reached
        report = make_report(analysis, three_sets, drawer=drawer)
    _same_report(report, reference)


@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_set_a_worker_fails_to_analyse_is_analysed_here(three_sets, monkeypatch, capsys, how):
    if not render.can_fork():
        pytest.skip("probe sets are analysed in worker processes only where they can be forked")
    parent, real = os.getpid(), P.analyze_run
    calls = []

    def fails_in_a_worker(run, **kw):
        if os.getpid() != parent:
            if how == "dies":
                os._exit(1)  # as a worker killed for memory would
            raise MemoryError("no room in the worker")
        calls.append(kw["probes"])
        return real(run, **kw)

    monkeypatch.setattr(P, "analyze_run", fails_in_a_worker)
    done = P.analyze_and_report(three_sets, backend="numpy", workers=2)
    assert calls == [["old"], ["new"], ["held"]]  # every set, in order, here
    _same_report(done.report, make_report(real(three_sets, backend="numpy"), three_sets, workers=1))
    assert ("worker process died" in capsys.readouterr().err) == (how == "dies")
    assert not multiprocessing.active_children()


def test_the_set_analysed_before_the_workers_start_may_die_too(three_sets, monkeypatch, capsys):
    """The last set is analysed in a process forked before matplotlib is loaded; if that process dies, the set is
    analysed here, after the usual one-line warning, and nothing is left running."""
    if not render.can_fork():
        pytest.skip("probe sets are analysed in other processes only where they can be forked")
    parent, real = os.getpid(), P.analyze_run
    calls = []

    def last_dies(run, **kw):
        if os.getpid() != parent and kw["probes"] == ["held"]:
            os._exit(1)
        if os.getpid() == parent:
            calls.append(kw["probes"])
        return real(run, **kw)

    monkeypatch.setattr(P, "analyze_run", last_dies)
    done = P.analyze_and_report(three_sets, backend="numpy", workers=2)
    assert calls == [["old"], ["held"]]  # "new" in a drawing worker, "held" here after its process died
    _same_report(done.report, make_report(real(three_sets, backend="numpy"), three_sets, workers=1))
    assert "worker process died" in capsys.readouterr().err
    assert not multiprocessing.active_children()


def test_an_error_in_a_set_analysed_by_a_worker_reaches_the_user_as_one_line(three_sets, tmp_path, capsys, monkeypatch):
    real = P.analyze_run

    def bad_held_set(run, **kw):
        if kw.get("probes") == ["held"]:
            raise InputError("probes/held: embeddings have NaN rows")
        return real(run, **kw)

    monkeypatch.setattr(P, "analyze_run", bad_held_set)
    assert main([str(three_sets.path), "--backend", "numpy", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: probes/held: embeddings have NaN rows"]
    assert not (tmp_path / "r").exists() and not multiprocessing.active_children()
