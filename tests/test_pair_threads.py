"""Stage pairs analysed side by side in threads (analysis._analyse_pairs) give the analysis of one pair after another."""

import threading
import time

import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from spatial_disorder import analysis as A
from spatial_disorder.analysis import FRAME_FIELDS, analyze_run
from spatial_disorder.knn import NumpyBackend
from spatial_disorder.run import ProbeSet, open_run, write_run
from spatial_disorder.synthetic import drifted_stages, structured_embeddings

BOOKKEEPING = ("timing_s", "total_s")


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Two probe sets (anisotropic clouds, drift with noise) over five stages: nine default pairs each."""
    stages: dict = {}
    probes = []
    for p, (name, n, caps, deg) in enumerate((("old", 60, 2, 15.0), ("held", 45, 3, 6.0))):
        img, txt, t2i = structured_embeddings(n, caps, 24, seed=20 + p)
        arrays, _, _ = drifted_stages(img, txt, 5, (deg, deg / 2, deg / 4), (deg / 3,), noise=0.05, seed=p)
        for t, (i, x) in enumerate(arrays):
            stages.setdefault(f"s{t}", {})[name] = {"image": i, "text": x}
        probes.append(ProbeSet.from_captions(name, pd.DataFrame({"id": [f"{name}{i}" for i in range(n)]}),
                                             [[f"{name} caption {c} of {i}" for c in range(caps)] for i in range(n)]))
    return open_run(write_run(tmp_path_factory.mktemp("pairs") / "run", probes, stages, metadata={"model": "toy"}))


def _threaded(monkeypatch, workers=2):
    """Make every set count as large (so its pairs run in threads) on a machine of ``workers`` cores."""
    monkeypatch.setattr(A, "SMALL_SET_VALUES", 0)
    monkeypatch.setattr(A, "_cores", lambda: workers)


@pytest.mark.parametrize(("fast", "symmetric"), [(False, False), (False, True), (True, False)])
def test_pairs_side_by_side_give_the_same_tables_as_one_after_another(two_sets, monkeypatch, fast, symmetric):
    """``symmetric``: the stages' exact searches side by side take half the products (Backend.self_topk), as they do from
    ``SYMMETRIC_ONE_THREAD_MIN_ROWS`` rows on; the kNN lists are the same (no near-ties in this data)."""
    options = dict(fast=fast, fast_queries=25, fast_rows=50, backend="numpy")
    with threadpool_limits(limits=1):  # the threads use one BLAS thread each: the same kernels, so the same bits
        one_by_one = analyze_run(two_sets, **options)
    _threaded(monkeypatch)
    searched = []
    real = NumpyBackend.self_topk
    monkeypatch.setattr(NumpyBackend, "self_topk", lambda self, x, k, **kw: (searched.append(len(x)), real(self, x, k, **kw))[1],
                        raising=False)
    monkeypatch.setattr(A, "SYMMETRIC_ONE_THREAD_MIN_ROWS", 40 if symmetric else 10**9)
    side_by_side = analyze_run(two_sets, **options)
    # images (60, 45) and captions (120, 135) of both sets from 40 rows on, at each of the five stages
    assert sorted(searched) == (sorted([60, 45, 120, 135] * 5) if symmetric else [])
    assert "side_by_side_s" in side_by_side.meta["timing_s"] and "side_by_side_s" not in one_by_one.meta["timing_s"]
    for name in FRAME_FIELDS:
        pd.testing.assert_frame_equal(getattr(side_by_side, name), getattr(one_by_one, name), check_exact=True, obj=name)
    assert {k: v for k, v in side_by_side.meta.items() if k not in BOOKKEEPING} == \
        {k: v for k, v in one_by_one.meta.items() if k not in BOOKKEEPING}
    assert len(side_by_side.cross_stage) == 2 * 5 * 5 and len(side_by_side.bridge_curve)  # computed beside the pairs


def test_an_error_in_one_pair_thread_is_raised_and_the_others_stop(two_sets, monkeypatch):
    _threaded(monkeypatch)
    started = []
    real = A._Engine.pair

    def pair(self, a, b, probe, out):
        started.append((a, b))
        if (a, b) == ("s1", "s2"):
            raise A.InputError("stage 's2', probe 'old', text: a planted failure")
        time.sleep(0.05)
        return real(self, a, b, probe, out)

    monkeypatch.setattr(A._Engine, "pair", pair)
    before = threading.active_count()
    with pytest.raises(A.InputError, match="a planted failure"):
        analyze_run(two_sets, backend="numpy")
    assert len(started) < 2 * 9  # the second set never started
    assert threading.active_count() == before  # no pair thread left behind


def test_a_cache_entry_is_computed_once_when_threads_ask_at_once(two_sets):
    engine = A._Engine(two_sets.embeddings, list(two_sets.stages), {"old": A.MODALITIES},
                       {"old": two_sets.probes["old"].text_to_image}, k=5, fast=False, backend="numpy", seed=0,
                       temperature=0.07, fast_queries=10, fast_rows=10, topology_max_items=10)
    calls, barrier, cache = [], threading.Barrier(6), {}

    def compute():
        calls.append(1)
        time.sleep(0.05)
        return object()

    def ask(results):
        barrier.wait()
        results.append(engine._once(cache, "key", compute))

    results: list = []
    threads = [threading.Thread(target=ask, args=(results,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 6 and all(r is results[0] for r in results)


@pytest.mark.parametrize(("values", "pairs", "cores", "fast", "expected"), [
    (10, 9, 16, True, 1),  # a small set: its analysis is one thread's work
    (A.SMALL_SET_VALUES + 1, 1, 16, False, 1),  # one pair
    (A.SMALL_SET_VALUES + 1, 9, 1, False, 1),  # one core
    (A.SMALL_SET_VALUES + 1, 9, 2, False, 2),
    (A.SMALL_SET_VALUES + 1, 9, 16, False, A.PAIR_THREADS),
    (25_000 * 512, 9, 2, False, 2),  # the COCO test set's captions
    (A.SIDE_BY_SIDE_MAX_VALUES + 1, 9, 2, False, 1),  # exact mode holds two stages' searches at once: not at any size
    (A.SIDE_BY_SIDE_MAX_VALUES + 1, 9, 2, True, 2),
])
def test_pairs_run_side_by_side_only_for_a_large_set_with_several_pairs_and_cores(monkeypatch, values, pairs, cores, fast,
                                                                                   expected):
    monkeypatch.setattr(A, "_cores", lambda: cores)
    assert A.pair_threads(values, pairs, fast) == expected
