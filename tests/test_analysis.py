import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spatial_disorder import open_run
from spatial_disorder.analysis import analyze_arrays, analyze_run, default_pairs
from spatial_disorder.errors import InputError
from spatial_disorder.metrics.registry import METRICS
from spatial_disorder.metrics.retrieval import retrieval_ranks
from spatial_disorder.synthetic import make_synthetic_run, planted_rotation

CROSS = [name for name, info in METRICS.items() if info.kind == "cross"]
# cross metrics that depend on the two stages only through image-text relations (not on each modality's own drift;
# cross-stage retrieval pairs images of one stage with captions of the other, and the bridge's unmapped cross-model
# retrieval and residual share compare the two stages' vectors directly, so they see that drift; the bridged
# scores do not: the fitted orthogonal map absorbs a rotation of stage b)
RELATIONAL = [m for m in CROSS if m != "rotation_mismatch_mean_deg" and METRICS[m].family != "cross_stage"
              and not (METRICS[m].family == "bridge" and (m.startswith("cross_") or m.endswith("_residual_frac")))]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def pair_data(n=60, caps=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    img = unit(rng.normal(size=(n, d)))
    t2i = np.repeat(np.arange(n), caps)
    txt = unit(img[t2i] + 0.6 * rng.normal(size=(n * caps, d)))
    return img, txt, t2i


def values(res, modality):
    s = res.summary[res.summary["modality"] == modality]
    return dict(zip(s["metric"], s["value"]))


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    path = make_synthetic_run(tmp_path_factory.mktemp("runs") / "planted", n_images=150, captions_per_image=3, d=24,
                              stages=3, rotation_deg=(12.0, 4.0), seed=5)
    return open_run(path)


def test_planted_rotation_run(synthetic_run):
    res = analyze_run(synthetic_run, k=5)
    assert res.meta["pairs"] == [["stage0", "stage1"], ["stage0", "stage2"], ["stage1", "stage2"]]
    for m in ("image", "text"):
        for b, scale in (("stage1", 1), ("stage2", 2)):
            spec = res.spectra[(res.spectra.stage_a == "stage0") & (res.spectra.stage_b == b) & (res.spectra.kind == m)
                               & ~res.spectra.centred]
            np.testing.assert_allclose(spec["angle_deg"].to_numpy()[:3], [12.0 * scale, 4.0 * scale, 0.0], atol=0.1)
            # the fit's subspace holds the turned planes up to the faint variance it leaves out: a tiny residual
            assert res.value("procrustes_residual_frac", "stage0", b, modality=m) < 1e-3
            assert res.value("rigid_share", "stage0", b, modality=m) > 0.99
            assert res.value("knn_overlap_mean", "stage0", b, modality=m) == 1.0
            assert res.value("topology_change_mean_deg", "stage0", b, modality=m) < 1e-3
            assert res.value("rotation_mean_deg", "stage0", b, modality=m) > 1.0
    cross = values(res, "cross")
    assert cross["intermodal_rotation_deg"] < 0.05
    for name in ("paired_angle_abs_change_mean_deg", "modality_gap_change", "contrastive_kl", "flips_t2i_lost",
                 "flips_i2t_gained", "t2i_R@1_delta"):
        assert abs(cross[name]) < 1e-3, name
    assert set(res.retrieval["metric"]) == {"R@1", "R@5", "R@10", "medr", "meanr", "rsum"}
    assert len(res.paired) == 3 * 450
    json.dumps(res.to_dict(), allow_nan=False)
    assert set(res.metric_names()) <= set(METRICS)
    rm = res.retrieval_matrix("R@1", "i2t")
    assert list(rm.index) == ["stage0", "stage1", "stage2"] and list(rm.columns) == ["synthetic"]
    mat = res.matrix("rotation_mean_deg", "synthetic", "image")
    assert list(mat.index) == ["stage0", "stage1"] and list(mat.columns) == ["stage1", "stage2"]


def test_bad_stage_names_and_single_stage(synthetic_run, tmp_path):
    with pytest.raises(InputError, match="no stage"):
        analyze_run(synthetic_run, pairs=[("stage0", "nope")])
    with pytest.raises(InputError, match="unknown probe"):
        analyze_run(synthetic_run, probes=["nope"])
    one = open_run(make_synthetic_run(tmp_path / "one", n_images=20, stages=1, d=8))
    res = analyze_run(one, k=3)
    assert res.summary.empty and set(res.retrieval["stage"]) == {"stage0"}
    assert "RunAnalysis" in res._repr_html_()


def test_item_frame_joins_captions_and_retrieval_matches_direct_call(synthetic_run):
    res = analyze_run(synthetic_run, k=5, pairs=[(0, 2)])
    frame = res.item_frame("stage0", "stage2", "synthetic", "text")
    assert {"caption", "image_id", "rotation_deg", "knn_overlap", "flip_lost"} <= set(frame.columns)
    assert frame["caption"].iloc[4] == synthetic_run.probes["synthetic"].texts["caption"].iloc[4]
    probe = synthetic_run.probes["synthetic"]
    ranks = retrieval_ranks(synthetic_run.embeddings("stage2", "synthetic", "image"),
                            synthetic_run.embeddings("stage2", "synthetic", "text"), probe.text_to_image)
    np.testing.assert_array_equal(frame["rank_b"].to_numpy(), ranks.t2i)
    r = res.retrieval
    got = r[(r.stage == "stage2") & (r.direction == "t2i") & (r.metric == "R@1")]["value"].item()
    assert got == pytest.approx(100 * np.mean(ranks.t2i == 1))
    assert res._repr_html_().startswith("<b>RunAnalysis</b>")


def test_identical_stages_have_zero_drift():
    img, txt, t2i = pair_data()
    res = analyze_arrays({"image": img, "text": txt}, {"image": img.copy(), "text": txt.copy()}, t2i, k=5)
    for m in ("image", "text"):
        v = values(res, m)
        for name in ("rotation_mean_deg", "rotation_p90_deg", "topology_change_mean_deg", "procrustes_residual_frac",
                     "procrustes_centred_residual_frac"):
            assert v[name] == 0.0, name
        assert v["procrustes_angle_deg"] < 1e-3 and v["knn_overlap_mean"] == 1.0
    c = values(res, "cross")
    for name in ("paired_angle_change_mean_deg", "rotation_mismatch_mean_deg", "modality_gap_change", "flips_i2t_lost",
                 "flips_i2t_gained", "flips_t2i_lost", "flips_t2i_gained", "i2t_R@1_delta", "t2i_R@1_delta"):
        assert c[name] == 0.0, name
    assert c["contrastive_kl"] == pytest.approx(0.0, abs=1e-9) and c["intermodal_rotation_deg"] < 1e-3


def test_rotation_of_one_modality_only():
    img, txt, t2i = pair_data(n=80, d=10, seed=1)
    r = planted_rotation(10, [20.0, 7.0], seed=3)
    res = analyze_arrays({"image": img, "text": txt}, {"image": unit(img @ r), "text": txt.copy()}, t2i, k=5)
    text, image, cross = values(res, "text"), values(res, "image"), values(res, "cross")
    assert text["rotation_mean_deg"] == 0.0 and text["knn_overlap_mean"] == 1.0 and text["procrustes_angle_deg"] < 1e-3
    assert image["procrustes_max_angle_deg"] == pytest.approx(20.0, abs=0.1)
    assert image["procrustes_residual_frac"] < 1e-4 and image["knn_overlap_mean"] == 1.0
    assert cross["intermodal_rotation_deg"] == pytest.approx(np.hypot(20.0, 7.0), abs=0.1)
    assert cross["paired_angle_abs_change_mean_deg"] > 1.0 and cross["rotation_mismatch_mean_deg"] > 1.0
    assert cross["contrastive_kl"] > 1e-3


def _cross(res):
    return values(res, "cross")


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), angle=st.floats(1.0, 179.0))
def test_common_rotation_leaves_cross_metrics_unchanged(seed, angle):
    img, txt, t2i = pair_data(n=24, caps=2, d=6, seed=seed)
    rng = np.random.default_rng(seed + 1)
    img_b, txt_b = unit(img + 0.4 * rng.normal(size=img.shape)), unit(txt + 0.4 * rng.normal(size=txt.shape))
    q = planted_rotation(6, [angle, angle / 2], seed=seed)
    base = _cross(analyze_arrays({"image": img, "text": txt}, {"image": img_b, "text": txt_b}, t2i, k=3, backend="numpy"))
    both = _cross(analyze_arrays({"image": img @ q, "text": txt @ q}, {"image": img_b @ q, "text": txt_b @ q}, t2i, k=3,
                                 backend="numpy"))
    only_b = _cross(analyze_arrays({"image": img, "text": txt}, {"image": img_b @ q, "text": txt_b @ q}, t2i, k=3,
                                   backend="numpy"))
    for name in CROSS:
        assert both[name] == pytest.approx(base[name], rel=1e-3, abs=1e-3, nan_ok=True), name
    for name in RELATIONAL:
        assert only_b[name] == pytest.approx(base[name], rel=1e-3, abs=1e-3, nan_ok=True), name


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
@example(seed=151)  # a fitted angle of 59.2586 degrees that differs by 7e-5 between the two orders (float32 rounding)
def test_swapping_stages_respects_each_metrics_symmetry(seed):
    img, txt, t2i = pair_data(n=24, caps=2, d=6, seed=seed)
    rng = np.random.default_rng(seed + 7)
    b = {"image": unit(img + 0.5 * rng.normal(size=img.shape)), "text": unit(txt + 0.5 * rng.normal(size=txt.shape))}
    a = {"image": img, "text": txt}
    fwd, bwd = analyze_arrays(a, b, t2i, k=3, backend="numpy"), analyze_arrays(b, a, t2i, k=3, backend="numpy")
    swap = {"flips_i2t_lost": "flips_i2t_gained", "flips_i2t_gained": "flips_i2t_lost",
            "flips_t2i_lost": "flips_t2i_gained", "flips_t2i_gained": "flips_t2i_lost",
            "modality_gap_a": "modality_gap_b", "modality_gap_b": "modality_gap_a"}
    for modality in ("image", "text", "cross"):
        f, g = values(fwd, modality), values(bwd, modality)
        for name, value in f.items():
            info = METRICS.get(name)
            if name in swap:
                assert value == pytest.approx(g[swap[name]], abs=1e-9), name
            elif info is None or info.symmetry == "none":
                continue
            elif info.symmetry == "symmetric":  # to float32 rounding: the engine holds unit rows in float32
                assert value == pytest.approx(g[name], rel=1e-5, abs=1e-5), name
            else:
                assert value == pytest.approx(-g[name], rel=1e-6, abs=1e-5), name


def test_fast_mode_samples_and_ci_covers_exact(tmp_path):
    path = make_synthetic_run(tmp_path / "r", n_images=1500, captions_per_image=1, d=16, stages=2, rotation_deg=(5.0,),
                              noise=0.6, seed=2)
    run = open_run(path)
    exact = analyze_run(run, k=10)
    fast = analyze_run(run, k=10, fast=True, fast_queries=300, seed=1)
    assert fast.meta["knn_queries"] == {"synthetic/image": 300, "synthetic/text": 300} and fast.meta["fast"]
    for m in ("image", "text"):
        true = exact.value("knn_overlap_mean", modality=m)
        lo, hi = fast.value("knn_overlap_ci_low", modality=m), fast.value("knn_overlap_ci_high", modality=m)
        assert lo < hi and lo <= true <= hi
    # sampled ranks equal the exact ranks on the sampled rows
    ex = exact.item_frame("stage0", "stage1", "synthetic", "text").set_index("row")["rank_b"]
    fa = fast.item_frame("stage0", "stage1", "synthetic", "text").set_index("row")["rank_b"].dropna()
    assert len(fa) == 300
    np.testing.assert_array_equal(fa.to_numpy(), ex.loc[fa.index].to_numpy())
    # every sampled R@K carries its 95% interval in the retrieval table; an exact R@K's interval is the value itself
    for res, sampled in ((fast, True), (exact, False)):
        r = res.retrieval
        rk = r[r["metric"].str.startswith("R@")]
        assert len(rk) == 2 * 2 * 3 and np.isfinite(rk[["ci_low", "ci_high"]].to_numpy()).all()
        assert (rk["ci_low"] <= rk["value"]).all() and (rk["value"] <= rk["ci_high"]).all()
        if sampled:  # the same intervals as meta["retrieval_ci95"]; most (95% each) hold the exact value
            covered = []
            for row in rk.itertuples():
                key = f"{row.stage}/{row.probe}/{row.direction}_{row.metric}"
                assert [row.ci_low, row.ci_high] == pytest.approx(fast.meta["retrieval_ci95"][key], abs=1e-4)
                assert row.ci_high - row.ci_low > 1.0  # 300 of 1,500 queries: a few points wide
                true = exact.retrieval.set_index(["stage", "direction", "metric"]).loc[(row.stage, row.direction, row.metric), "value"]
                covered.append(row.ci_low <= true <= row.ci_high)
            assert sum(covered) >= 9, covered
        else:
            np.testing.assert_array_equal(rk["ci_low"], rk["value"])
            np.testing.assert_array_equal(rk["ci_high"], rk["value"])
        assert r[~r["metric"].str.startswith("R@")][["ci_low", "ci_high"]].isna().all().all()  # medr, meanr, rsum: none


def test_large_n_paths_sample_topology_and_procrustes_rows():
    img, txt, t2i = pair_data(n=300, caps=1, d=8, seed=9)
    r = planted_rotation(8, [15.0], seed=1)
    a, b = {"image": img, "text": txt}, {"image": unit(img @ r), "text": unit(txt @ r)}
    res = analyze_arrays(a, b, t2i, k=5, fast=True, fast_queries=100, fast_rows=120, topology_max_items=50)
    assert res.meta["procrustes_rows"] == {"arrays/image": 120, "arrays/text": 120}
    assert res.value("topology_pairs", modality="image") == 50 * 49 // 2
    assert res.value("topology_change_mean_deg", modality="image") < 1e-3
    assert res.value("procrustes_max_angle_deg", modality="text") == pytest.approx(15.0, abs=0.1)
    assert res.value("knn_overlap_mean", modality="image") == 1.0
    assert res.value("knn_overlap_items", modality="text") == 100


def test_backends_agree():
    img, txt, t2i = pair_data(n=50, seed=4)
    rng = np.random.default_rng(0)
    b = {"image": unit(img + 0.3 * rng.normal(size=img.shape)), "text": txt}
    s1 = analyze_arrays({"image": img, "text": txt}, b, t2i, k=4, backend="numpy").summary
    s2 = analyze_arrays({"image": img, "text": txt}, b, t2i, k=4, backend="auto").summary
    np.testing.assert_allclose(s1["value"].to_numpy(), s2["value"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_single_modality_arrays():
    x = np.random.default_rng(0).normal(size=(30, 5))
    res = analyze_arrays({"image": x}, {"image": x * 2.0}, k=3)
    assert set(res.summary["modality"]) == {"image"} and res.retrieval.empty
    assert res.value("rotation_mean_deg") == 0.0


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a, b: b["image"].__setitem__(3, 0.0), "zero vector"),
        (lambda a, b: b["text"].__setitem__((2, 1), np.nan), "NaN or inf"),
        (lambda a, b: a["image"].__setitem__((0, 0), np.inf), "NaN or inf"),
        (lambda a, b: b.__setitem__("image", b["image"][:-1]), "items"),
        (lambda a, b: b.__setitem__("text", b["text"][:, :-1]), "dimension"),
    ],
)
def test_bad_inputs_raise_one_clear_error(mutate, match):
    img, txt, t2i = pair_data(n=20)
    a, b = {"image": img.copy(), "text": txt.copy()}, {"image": img.copy(), "text": txt.copy()}
    mutate(a, b)
    with pytest.raises(InputError, match=match) as err:
        analyze_arrays(a, b, t2i, k=3)
    assert "\n" not in str(err.value)


def test_more_neighbours_than_items_and_bad_options():
    x = np.random.default_rng(0).normal(size=(6, 4))
    with pytest.raises(InputError, match="k=10"):
        analyze_arrays({"image": x}, {"image": x}, k=10)
    with pytest.raises(InputError, match="text_to_image"):
        analyze_arrays({"image": x, "text": x[:4]}, {"image": x, "text": x[:4]}, k=2)
    with pytest.raises(InputError, match="modalities"):
        analyze_arrays({"image": x}, {"text": x}, k=2)
    with pytest.raises(InputError, match="reference stage"):
        default_pairs(["a", "b"], ref="c")


def test_per_stage_caches_equal_direct_metric_calls():
    """Neighbour lists (symmetric search), topology angles and KL rows are computed once per stage and reused
    across pairs; every pair must still equal the stand-alone metric functions on the same two stages."""
    from spatial_disorder.knn import as_unit_rows
    from spatial_disorder.metrics.deviation import contrastive_kl
    from spatial_disorder.metrics.neighbours import knn_overlap
    from spatial_disorder.metrics.rotation import topology_change

    rng = np.random.default_rng(11)
    n, d = 2300, 8  # above the KL and topology sample thresholds (2048, 60): both sampled paths run
    t2i = np.arange(n)
    stages = [{"image": unit(rng.normal(size=(n, d))), "text": unit(rng.normal(size=(n, d)))}]
    for _ in range(2):
        stages.append({m: unit(x + 0.3 * rng.normal(size=x.shape)) for m, x in stages[-1].items()})
    arrays = {f"s{i}": s for i, s in enumerate(stages)}

    from spatial_disorder.analysis import _Engine, _run_engine

    engine = _Engine(lambda s, p, m: arrays[s][m], list(arrays), {"p": ("image", "text")}, {"p": t2i}, k=5, fast=False, backend="auto",
                     seed=3, temperature=0.05, fast_queries=1000, fast_rows=20000, topology_max_items=60)
    engine.symmetric_min_rows = 0  # use the symmetric kNN search (off by default)
    summary = _run_engine(engine, default_pairs(list(arrays)), list(arrays))["summary"]
    for a, b in default_pairs(list(arrays)):
        got = summary[(summary.stage_a == a) & (summary.stage_b == b)]
        val = dict(zip(got.metric + "/" + got.modality, got.value))
        for m in ("image", "text"):
            xa, xb = as_unit_rows(arrays[a][m]), as_unit_rows(arrays[b][m])
            assert val[f"knn_overlap_mean/{m}"] == pytest.approx(knn_overlap(xa, xb, 5, backend="numpy").mean(), abs=1e-12)
            topo = topology_change(xa, xb, exact_max=60, seed=3)
            assert val[f"topology_change_mean_deg/{m}"] == pytest.approx(topo.mean_deg, rel=1e-6)
        kl = contrastive_kl(arrays[a]["image"], arrays[a]["text"], arrays[b]["image"], arrays[b]["text"], temperature=0.05, seed=3)
        assert kl.n_rows_i2t == 256 < n
        assert val["contrastive_kl/cross"] == pytest.approx(kl.mean, rel=1e-5)
        assert val["contrastive_kl_rows/cross"] == kl.n_rows_i2t + kl.n_rows_t2i


@pytest.mark.parametrize("n", [60, 700])  # every image queried, and a seeded 500 of 700
def test_cross_stage_cells_against_brute_force(n):
    """Each cell is the share of queried images whose best caption (at the other stage) is one of their own, ties
    pessimistic; the diagonal cells reuse the stage's own retrieval ranks and must agree with the same count."""
    img, txt, t2i = pair_data(n=n, caps=2, d=8, seed=3)
    rng = np.random.default_rng(4)
    r = planted_rotation(8, [25.0], seed=5)
    cand = {"image": unit(img @ r), "text": unit(txt @ r + 0.3 * rng.normal(size=txt.shape))}
    res = analyze_arrays({"image": img, "text": txt}, cand, t2i, k=5)
    cells = res.cross_stage.set_index(["image_stage", "text_stage"])
    arrays = {"reference": {"image": img, "text": txt}, "candidate": cand}
    queries = int(cells["queries"].iloc[0])
    for (si, st_), row in cells.iterrows():
        sims = arrays[si]["image"].astype(np.float64) @ arrays[st_]["text"].astype(np.float64).T
        own = np.array([sims[i, t2i == i].max() for i in range(n)])
        wrong = np.where(t2i[None, :] == np.arange(n)[:, None], -np.inf, sims)
        hit = (wrong >= own[:, None] - 1e-5).sum(axis=1) == 0
        if queries == n:
            assert row["value"] == pytest.approx(100.0 * hit.mean(), abs=1e-9), (si, st_)
        else:  # a seeded sample: its interval is the sampled share's, and the all-image value lies well inside the
            # sampled share's 99.9% interval (the 95% one misses it in one seeded sample of twenty, as it should)
            from spatial_disorder.analysis import proportion_ci

            assert queries == 500
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(100 * v for v in proportion_ci(row["value"] / 100, 500, n)))
            lo, hi = proportion_ci(row["value"] / 100, 500, n, level=0.999)
            assert 100 * lo <= 100.0 * hit.mean() <= 100 * hi, (si, st_)
    for stage in ("reference", "candidate"):
        own_r1 = res.retrieval[(res.retrieval["stage"] == stage) & (res.retrieval["direction"] == "i2t") & (res.retrieval["metric"] == "R@1")]
        if queries == n:
            assert cells.loc[(stage, stage), "value"] == pytest.approx(float(own_r1["value"].iloc[0]), abs=1e-9)


def test_small_probe_sets_are_analysed_on_one_thread_and_large_ones_on_all(synthetic_run, monkeypatch):
    """A quick run's products are too small for a second BLAS thread, whose spinning only costs CPU (analysis.SMALL_SET_VALUES)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import spatial_disorder.analysis as A

    seen = []
    real = A._run_engine

    def spy(*args, **kwargs):
        seen.append(max(pool["num_threads"] for pool in threadpool_info()))
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "_run_engine", spy)
    with threadpool_limits(limits=2):
        if max(pool["num_threads"] for pool in threadpool_info()) < 2:
            pytest.skip("this BLAS cannot run two threads")
        analyze_run(synthetic_run, pairs=[(0, 1)], backend="numpy")  # 450 captions x 24 values
        img, txt, t2i = pair_data()
        analyze_arrays({"image": img, "text": txt}, {"image": img, "text": txt}, t2i, backend="numpy")
        monkeypatch.setattr(A, "SMALL_SET_VALUES", 100)  # now both count as large: the caller's threads are kept
        analyze_run(synthetic_run, pairs=[(0, 1)], backend="numpy")
        analyze_arrays({"image": img, "text": txt}, {"image": img, "text": txt}, t2i, backend="numpy")
        outside = max(pool["num_threads"] for pool in threadpool_info())
    assert seen == [1, 1, outside, outside] and outside == 2


def _brute_force_interval(hits, n, big_n, alpha=0.025):
    """The exact finite-population interval from its definition, with exact integer arithmetic."""
    from fractions import Fraction
    from math import comb

    def tail(k, upper):  # P(X >= hits | K = k) or P(X <= hits | K = k)
        rng = range(hits, n + 1) if upper else range(0, hits + 1)
        return Fraction(sum(comb(k, i) * comb(big_n - k, n - i) for i in rng), comb(big_n, n))

    ks = range(hits, big_n - (n - hits) + 1)
    return min(k for k in ks if tail(k, True) > alpha) / big_n, max(k for k in ks if tail(k, False) > alpha) / big_n


def test_proportion_interval_known_answers():
    """The exact hypergeometric interval against its definition (brute force, exact fractions), against Clopper-Pearson
    when the population is large, and at the two ends of the finite-population correction."""
    from spatial_disorder.analysis import proportion_ci

    for hits, n, big_n in ((0, 20, 60), (7, 20, 60), (20, 20, 60), (3, 40, 45), (1, 1, 7), (12, 30, 200)):
        assert proportion_ci(hits / n, n, big_n) == pytest.approx(_brute_force_interval(hits, n, big_n), abs=1e-12), (hits, n, big_n)
    big = 10**6  # sampling 100 of a million is sampling with replacement: Clopper-Pearson's binomial limits
    assert proportion_ci(0.5, 100, big) == pytest.approx((0.3983, 0.6017), abs=2e-3)
    assert proportion_ci(0.0, 10, big) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)), abs=2e-3)  # 0 of 10: up to 31%
    assert proportion_ci(0.3, 50, 50) == (0.3, 0.3)  # every item seen: no sampling error
    assert all(np.isnan(proportion_ci(0.3, 0, 50)))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 400), st.integers(0, 400), st.integers(1, 400), st.integers(0, 2**31 - 1))
def test_proportion_interval_is_ordered_and_has_a_width_exactly_when_sampled(big_n, hits, n, seed):
    from spatial_disorder.analysis import proportion_ci

    hits, n = min(hits, big_n), min(n, big_n)
    p = np.random.default_rng(seed).hypergeometric(hits, big_n - hits, n) / n
    lo, hi = proportion_ci(p, n, big_n)
    assert 0.0 <= lo <= p <= hi <= 1.0
    assert (hi > lo) == (n < big_n)  # a sample never gives certainty, not even when every sampled item hit or missed


def test_proportion_interval_covers_at_least_95_percent_of_seeded_samples():
    """Samples without replacement from populations of known share: the interval holds the population's share in at
    least 95% of them, and is not far wider than it needs to be (the finite-population correction)."""
    from spatial_disorder.analysis import proportion_ci

    rng = np.random.default_rng(0)
    for big_n, share, n in ((5000, 0.9, 200), (5000, 0.5, 1000), (1000, 0.97, 800), (25000, 0.3, 1000), (700, 0.0157, 500)):
        hits = int(round(share * big_n))
        draws = rng.hypergeometric(hits, big_n - hits, n, size=600) / n
        cache = {}
        covered = np.mean([(lambda lo, hi: lo <= hits / big_n <= hi)(*cache.setdefault(p, proportion_ci(p, n, big_n))) for p in draws])
        assert 0.93 <= covered <= 0.995, (big_n, share, n, covered)  # 600 draws: +-0.9 points of Monte Carlo error
