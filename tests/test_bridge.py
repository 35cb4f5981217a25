"""The bridge: cross-model retrieval, fitted maps scored on held-out items, the fit/apply/save/load API and
`sd-analyze bridge`. Known answers come from planted maps on an anisotropic CLIP-like cloud."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from spatial_disorder import bridge
from spatial_disorder.cli import main
from spatial_disorder.errors import InputError
from spatial_disorder.metrics import bridge as mb
from spatial_disorder.metrics.retrieval import retrieval_scores
from spatial_disorder.run import ProbeSet, write_run
from spatial_disorder.synthetic import planted_rotation, uniform_rotation


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clip_like(n=600, d=48, caption_noise=0.9, seed=0):
    """Images and one caption each: a power-law spectrum in a random basis, a common mean (a cone), caption = image + noise."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = (1.0 + np.arange(d)) ** -0.6
    mean = rng.normal(size=d)
    mean *= 1.2 * np.linalg.norm(scales) / np.linalg.norm(mean)
    latent = rng.normal(size=(n, d)) * scales
    img = latent @ basis.T + mean
    txt = (latent + caption_noise * scales * rng.normal(size=(n, d))) @ basis.T + mean
    return {"image": unit(img), "text": unit(txt)}, np.arange(n)


def rotated(arrays, r, noise=0.02, seed=1):
    """Both modalities turned by one common rotation plus faint fresh noise."""
    rng = np.random.default_rng(seed)
    d = r.shape[0]
    return {m: unit(x @ r + noise / np.sqrt(d) * rng.normal(size=x.shape)) for m, x in arrays.items()}


@pytest.fixture(scope="module")
def planted():
    ref, t2i = clip_like()
    return ref, rotated(ref, planted_rotation(ref["image"].shape[1], [70.0] * 20, seed=3)), t2i


# ---------------------------------------------------------------- known answers


def test_planted_common_rotation_is_recovered(planted):
    ref, cand, t2i = planted
    ev = mb.evaluate_bridge(ref, cand, t2i, seed=0)
    t = ev.table.set_index("setting")
    assert 40 < t.at["new/new", "t2i_R@1"] < 95  # a task with room to fail
    for setting in ("bridge orthogonal index", "bridge orthogonal query"):
        for d in ("t2i", "i2t"):
            assert t.at[setting, f"{d}_R@1"] >= 0.98 * t.at["new/new", f"{d}_R@1"]
        assert t.at[setting, "image_agreement"] >= 0.97
        assert t.at[setting, "text_agreement"] >= 0.97
        assert t.at[setting, "image_residual_frac"] < 0.05  # the drift is rigid: the map leaves almost none of it
    m = ev.metrics
    assert m["bridge_t2i_R@1_recovery"] >= 0.98 and m["bridge_i2t_R@1_recovery"] >= 0.98
    assert m["cross_t2i_R@1"] < 0.5 * m["heldout_new_t2i_R@1"]  # without a map the old index is of little use


def test_shuffling_30_percent_of_one_modality_gives_agreement_near_07():
    ref, t2i = clip_like(n=1000, seed=4)
    cand = rotated(ref, planted_rotation(48, [50.0] * 20, seed=5))
    rng = np.random.default_rng(6)
    moved = rng.choice(1000, 300, replace=False)
    cand["image"][moved] = cand["image"][np.roll(moved, 1)]  # a cycle: every moved row lands on another item
    m = mb.evaluate_bridge(ref, cand, t2i, seed=0, methods=("orthogonal",), directions=("index",)).metrics
    assert abs(m["bridge_image_agreement"] - 0.7) < 0.07
    assert m["bridge_text_agreement"] > 0.97


def test_cross_retrieval_equals_old_old_without_drift_and_collapses_under_a_large_rotation():
    ref, t2i = clip_like(n=400)
    same = mb.cross_retrieval(ref, ref, t2i)
    old = retrieval_scores(ref["image"], ref["text"], t2i)
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            assert same[f"cross_{d}_R@{k}"] == pytest.approx(old[f"{d}_R@{k}"])
    turned = {m: unit(x @ uniform_rotation(48, 90.0)) for m, x in ref.items()}
    far = mb.cross_retrieval(ref, turned, t2i)
    assert far["cross_t2i_R@1"] < 5 and far["cross_i2t_R@1"] < 5  # chance is 0.25 %
    assert retrieval_scores(turned["image"], turned["text"], t2i)["t2i_R@1"] == pytest.approx(old["t2i_R@1"])


def test_residual_frac_known_answers():
    rng = np.random.default_rng(0)
    a, b = unit(rng.normal(size=(50, 6))), unit(rng.normal(size=(50, 6)))
    assert mb.residual_frac(a, a, b) == pytest.approx(1.0)  # a map that moves nothing leaves all the drift
    assert mb.residual_frac(a, b, b) == 0.0
    assert np.isnan(mb.residual_frac(a[:, :5], b, b))


def test_bct_criterion_and_recovery_without_drift():
    ref, t2i = clip_like(n=300)
    t = mb.evaluate_bridge(ref, ref, t2i).table.set_index("setting")
    assert t.at["cross", "t2i_bct"] == 1 and t.at["cross", "i2t_bct"] == 1
    assert t.at["cross", "t2i_R@1_recovery"] == pytest.approx(1.0)
    assert t.at["bridge orthogonal index", "image_agreement"] == 1.0


def test_scores_use_held_out_items_only(planted, monkeypatch):
    ref, cand, t2i = planted
    split = mb.calibration_split(t2i, len(t2i), seed=2)
    base = mb.evaluate_bridge(ref, cand, t2i, split=split).table.set_index("setting")
    # any change to calibration items moves the fitted maps, never the unmapped rows
    noisy = {m: x.copy() for m, x in cand.items()}
    rng = np.random.default_rng(9)
    noisy["image"][split.fit_images] = unit(rng.normal(size=(len(split.fit_images), 48)))
    noisy["text"][split.fit_texts] = unit(rng.normal(size=(len(split.fit_texts), 48)))
    moved = mb.evaluate_bridge(ref, noisy, t2i, split=split).table.set_index("setting")
    for setting in ("old/old", "new/new", "cross"):
        assert moved.loc[setting, "t2i_R@1":"i2t_R@10"].tolist() == base.loc[setting, "t2i_R@1":"i2t_R@10"].tolist()
    assert moved.at["bridge orthogonal index", "image_agreement"] < base.at["bridge orthogonal index", "image_agreement"] - 0.3
    # every array that is scored holds held-out rows only
    seen = []
    real = mb.retrieval_ranks

    def spy(images, texts, *args, **kw):
        seen.append((len(images), len(texts)))
        return real(images, texts, *args, **kw)

    monkeypatch.setattr(mb, "retrieval_ranks", spy)
    mb.evaluate_bridge(ref, cand, t2i, split=split)
    held = len(split.held_images)
    assert seen and all(shape == (held, held) for shape in seen)
    held_new = retrieval_scores(cand["image"][split.held_images], cand["text"][split.held_texts], np.arange(held))
    assert base.at["new/new", "t2i_R@1"] == pytest.approx(held_new["t2i_R@1"])


@given(n_images=st.integers(2, 60), per=st.integers(1, 3), fraction=st.floats(0.05, 0.95), seed=st.integers(0, 99))
def test_calibration_split_partitions_images_and_captions_follow(n_images, per, fraction, seed):
    t2i = np.random.default_rng(seed).permutation(np.repeat(np.arange(n_images), per))
    s = mb.calibration_split(t2i, n_images, fraction, seed)
    assert sorted(np.concatenate([s.fit_images, s.held_images]).tolist()) == list(range(n_images))
    assert len(s.fit_images) >= 1 and len(s.held_images) >= 1
    assert set(t2i[s.fit_texts]) <= set(s.fit_images.tolist()) and set(t2i[s.held_texts]) <= set(s.held_images.tolist())
    assert len(s.fit_texts) + len(s.held_texts) == len(t2i)
    again = mb.calibration_split(t2i, n_images, fraction, seed)
    assert np.array_equal(again.fit_images, s.fit_images)
    assert np.array_equal(s.held_images[s.held_text_to_image()], t2i[s.held_texts])
    assert set(s.prefix(1).fit_images.tolist()) <= set(s.fit_images.tolist())


def test_fit_matches_scipy_and_ridge_approaches_it():
    rng = np.random.default_rng(0)
    a = unit(rng.normal(size=(500, 24)))
    b = unit(a @ planted_rotation(24, [40.0] * 6, seed=1) + 0.1 * rng.normal(size=(500, 24)))
    r = scipy.linalg.orthogonal_procrustes(a.astype(np.float64), b.astype(np.float64))[0]
    assert np.allclose(mb.fit_map(a, b, block=77), r, atol=1e-6)
    clean = unit(a @ planted_rotation(24, [40.0] * 6, seed=1))
    assert np.allclose(mb.fit_map(a, clean, "ridge", ridge=1e-9), planted_rotation(24, [40.0] * 6, seed=1), atol=1e-4)


def test_too_few_calibration_items_and_mismatched_items_raise():
    ref, t2i = clip_like(n=60)
    with pytest.raises(InputError, match="too few"):
        mb.evaluate_bridge(ref, ref, t2i, fraction=0.01)  # one calibration image
    short = {m: x[:-1] for m, x in ref.items()}
    with pytest.raises(InputError, match="same items"):
        mb.evaluate_bridge(ref, short, t2i)
    with pytest.raises(InputError, match="too few"):
        bridge.fit(ref["image"][:1], ref["image"][:1])
    with pytest.raises(InputError, match="too few"):  # between widths, one row per dimension is still needed
        mb.fit_map(ref["image"][:10], ref["image"][:10, :20])


def low_rank_cloud(n, d, k, seed=0):
    """Unit rows filling a k-dimensional subspace of R^d (a power-law spectrum there, a faint isotropic rest), and its basis."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, k)))
    x = (rng.normal(size=(n, k)) * (1.0 + np.arange(k)) ** -0.3) @ basis.T + 0.01 / np.sqrt(d) * rng.normal(size=(n, d))
    return unit(x), basis


def test_orthogonal_map_below_d_rows_recovers_a_rotation_of_the_data_subspace():
    n, d, k = 400, 64, 12
    img, basis = low_rank_cloud(n, d, k)
    txt = unit(img + 0.3 / np.sqrt(k) * np.random.default_rng(1).normal(size=(n, k)) @ basis.T)
    q = planted_rotation(k, [60.0] * 6, seed=2)
    r = np.eye(d) + basis @ (q - np.eye(k)) @ basis.T  # turns the data's subspace, leaves the rest
    ref, cand, t2i = {"image": img, "text": txt}, {"image": unit(img @ r), "text": unit(txt @ r)}, np.arange(n)
    m = mb.fit_map(img[:40], cand["image"][:40])  # 40 calibration rows for 64 dimensions
    assert np.allclose(m @ m.T, np.eye(d), atol=1e-9)  # an orthogonal map
    held = img[200:]
    assert np.abs(held @ m - held @ r).max() < 0.03  # the planted rotation, where the data are
    split = mb.Split(np.arange(40), np.arange(200, n), t2i)  # 40 calibration images (and their 40 captions)
    ev = mb.evaluate_bridge(ref, cand, t2i, split=split, methods=("orthogonal",), directions=("index",))
    t = ev.table.set_index("setting")
    assert t.at["cross", "t2i_R@1"] < 0.5 * t.at["new/new", "t2i_R@1"]  # without a map the upgrade breaks retrieval
    assert ev.metrics["bridge_t2i_R@1_recovery"] >= 0.98 and ev.metrics["bridge_i2t_R@1_recovery"] >= 0.98
    assert ev.metrics["bridge_image_agreement"] > 0.97 and ev.metrics["bridge_text_agreement"] > 0.97


def test_learning_curve_drops_impossible_sizes_and_explains_too_small_ones(planted):
    ref, cand, t2i = planted  # 300 held-in images, d = 48
    lc = mb.learning_curve(ref, cand, t2i, sizes=(20, 100, 1000, None))
    assert sorted(set(lc["calibration_images"])) == [20, 100, 300]
    small = lc[(lc["calibration_images"] == 20) & (lc["method"] == "orthogonal")].iloc[0]
    assert np.isfinite(small["t2i_R@1_recovery"]) and small["note"] == ""  # fitted in the principal subspace
    tiny = mb.learning_curve(ref, cand, t2i, sizes=(1, 20))
    assert tiny[tiny["calibration_images"] == 1]["note"].str.contains("too few").all()
    assert lc[lc["method"] == "ridge"]["t2i_R@1_recovery"].notna().all()
    full = lc[(lc["calibration_images"] == 300) & (lc["method"] == "orthogonal")].iloc[0]
    ev = mb.evaluate_bridge(ref, cand, t2i)
    assert full["t2i_R@1_recovery"] == pytest.approx(ev.metrics["bridge_t2i_R@1_recovery"])


def _brute_force_first(carried, target, rows):
    """1 where target row i is the strictly nearest target to carried row i (the full cosine rows, no tiling)."""
    sims = carried[rows].astype(np.float64) @ target.astype(np.float64).T
    own = sims[np.arange(len(rows)), rows]
    return (np.sum(sims > own[:, None], axis=1) == 0) & (np.sum(sims == own[:, None], axis=1) == 1)


def test_sampled_agreement_is_the_brute_force_share_of_its_seeded_queries():
    arrays, _ = clip_like(n=2400, d=32, seed=11)
    target = arrays["text"]
    carried = unit(target @ planted_rotation(32, [3.0] * 8, seed=12) + 0.01 * np.random.default_rng(13).normal(size=target.shape))
    moved = np.random.default_rng(14).choice(2400, 960, replace=False)
    carried[moved] = carried[np.roll(moved, 1)]  # 40% of the rows point at another item: agreement near 0.6
    every = _brute_force_first(carried, target, np.arange(2400))
    rows = mb.agreement_rows(2400, 500, seed=3)
    assert len(rows) == 500 and len(np.unique(rows)) == 500 and np.all(np.diff(rows) > 0)
    assert mb.agreement(carried, target, max_queries=500, seed=3) == pytest.approx(every[rows].mean())
    assert mb.agreement(carried, target, max_queries=None) == pytest.approx(every.mean())
    assert mb.agreement(carried, target, max_queries=5000) == pytest.approx(every.mean())  # a budget above n ranks every row
    assert abs(mb.agreement(carried, target, max_queries=500, seed=3) - every.mean()) < 0.07  # 500 queries: +-4.4 points
    with pytest.raises(InputError, match="at least one query row"):
        mb.agreement_rows(2400, 0)


def test_agreement_budget_reaches_the_bridge_metrics_and_leaves_small_sets_exact():
    ref, t2i = clip_like(n=1000, seed=4)
    cand = rotated(ref, planted_rotation(48, [50.0] * 20, seed=5))
    rng = np.random.default_rng(6)
    moved = rng.choice(1000, 300, replace=False)
    cand["text"][moved] = cand["text"][np.roll(moved, 1)]
    settings = dict(seed=0, methods=("orthogonal",), directions=("index",))
    every = mb.evaluate_bridge(ref, cand, t2i, agreement_queries=None, **settings).metrics
    default = mb.evaluate_bridge(ref, cand, t2i, **settings).metrics  # 500 held-out captions: under the budget
    sampled = mb.evaluate_bridge(ref, cand, t2i, agreement_queries=100, **settings).metrics
    assert default["bridge_text_agreement"] == every["bridge_text_agreement"]
    assert sampled["bridge_text_agreement"] != every["bridge_text_agreement"]  # 100 of 500 rows: a different estimate
    assert abs(sampled["bridge_text_agreement"] - every["bridge_text_agreement"]) < 0.15
    assert sampled["bridge_t2i_R@1"] == every["bridge_t2i_R@1"]  # the budget touches agreement only


def test_learning_curve_given_its_split_and_held_out_recall_is_unchanged(planted):
    ref, cand, t2i = planted
    lc = mb.learning_curve(ref, cand, t2i, sizes=(50, None), seed=2)
    split = mb.calibration_split(np.asarray(t2i), ref["image"].shape[0], mb.DEFAULT_FRACTION, 2)
    old, new = mb.held_out_recall(ref, split), mb.held_out_recall(cand, split)
    again = mb.learning_curve(ref, cand, t2i, sizes=(50, None), split=split, old=old, new=new)
    pd.testing.assert_frame_equal(lc, again)
    unit_in = mb.learning_curve(ref, cand, t2i, sizes=(50, None), seed=2, normalized=True)  # unit rows: no second normalisation
    pd.testing.assert_frame_equal(lc, unit_in, check_exact=False, rtol=1e-4)


def test_bridge_metrics_is_a_flat_registrable_function(planted):
    ref, cand, t2i = planted
    m = mb.bridge_metrics(ref, cand, t2i, seed=1)
    assert all(isinstance(v, float) for v in m.values())
    for k in (1, 5, 10):
        assert {f"cross_t2i_R@{k}", f"cross_i2t_R@{k}", f"bridge_t2i_R@{k}", f"bridge_i2t_R@{k}"} <= set(m)
    assert {"bridge_t2i_R@1_recovery", "bridge_i2t_R@1_recovery", "bridge_image_agreement", "bridge_text_agreement"} <= set(m)


# ---------------------------------------------------------------- API: apply, save, load


@given(n=st.integers(1, 300), block=st.integers(1, 64), d_out=st.integers(2, 12), normalize=st.booleans())
def test_blocked_apply_equals_the_dense_product(tmp_path_factory, n, block, d_out, normalize):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    b = bridge.Bridge(rng.normal(size=(8, d_out)), method="ridge")
    dense = x.astype(np.float64) @ b.matrix
    if normalize:
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    assert np.allclose(b.apply(x, normalize=normalize, block=block), dense, atol=1e-5)
    folder = tmp_path_factory.mktemp("apply")
    np.save(folder / "old.npy", x)
    bridge.apply_npy(b, folder / "old.npy", folder / "new.npy", normalize=normalize, block=block)
    assert np.allclose(np.load(folder / "new.npy"), dense, atol=1e-5)


def test_apply_faiss_builds_the_bridged_flat_index():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(257, 16)))
    ix = faiss.IndexFlatIP(16)
    ix.add(x)
    b = bridge.Bridge(planted_rotation(16, [30.0] * 4))
    out = bridge.apply_faiss(b, ix, block=50)
    assert out.ntotal == 257 and out.metric_type == ix.metric_type
    assert np.allclose(out.reconstruct_n(0, 257), x @ b.matrix, atol=1e-5)
    with pytest.raises(InputError, match="dimension"):
        bridge.apply_faiss(bridge.Bridge(np.eye(8)), ix)


def test_save_load_round_trip_and_checksum(tmp_path):
    rng = np.random.default_rng(0)
    a = unit(rng.normal(size=(200, 16)))
    b = bridge.fit(a, unit(a @ planted_rotation(16, [20.0] * 4)), rows=np.arange(0, 200, 2), modality="image")
    npy, side = bridge.save(b, tmp_path / "maps" / "image")
    back = bridge.load(tmp_path / "maps" / "image.json")
    assert np.array_equal(back.matrix, b.matrix)
    assert (back.method, back.direction, back.modality, back.n_fit, back.fit_rows) == ("orthogonal", "index", "image", 100, list(range(0, 200, 2)))
    meta = json.loads(side.read_text())
    assert (meta["d_in"], meta["d_out"]) == (16, 16)
    np.save(npy, b.matrix * 2)  # changed behind the sidecar's back
    with pytest.raises(InputError, match="checksum"):
        bridge.load(npy)
    npy.unlink()
    with pytest.raises(InputError, match="does not exist"):
        bridge.load(side)


def test_bad_maps_are_refused():
    with pytest.raises(InputError, match="NaN or inf"):
        bridge.Bridge(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(InputError, match="matrix"):
        bridge.Bridge(np.ones(4))
    with pytest.raises(InputError, match="dimension"):
        bridge.Bridge(np.eye(4)).apply(np.ones((3, 5), dtype=np.float32))


def test_apply_npy_with_bad_input_writes_nothing(tmp_path):
    np.save(tmp_path / "old.npy", np.ones((10, 5), dtype=np.float32))
    with pytest.raises(InputError, match="dimension 5"):
        bridge.apply_npy(bridge.Bridge(np.eye(4)), tmp_path / "old.npy", tmp_path / "new.npy")
    bad = np.ones((10, 4), dtype=np.float32)
    bad[7, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match="NaN"):
        bridge.apply_npy(bridge.Bridge(np.eye(4)), tmp_path / "bad.npy", tmp_path / "new.npy", block=3)
    assert sorted(os.listdir(tmp_path)) == ["bad.npy", "old.npy"]


# ---------------------------------------------------------------- sd-analyze bridge


@pytest.fixture(scope="module")
def bridge_run(tmp_path_factory):
    ref, _ = clip_like(n=240, d=32, seed=7)
    cand = rotated(ref, planted_rotation(32, [60.0] * 12, seed=8))
    root = tmp_path_factory.mktemp("bridge-cli")
    probe = ProbeSet.from_pairs("val", [f"caption {i}" for i in range(240)])
    run = write_run(root / "run", probe, {"old": {"val": ref}, "new": {"val": cand}}, metadata={"model": "toy"})
    for side, arrays in (("ref", ref), ("cand", cand)):
        for m, x in arrays.items():
            np.save(root / f"{side}_{m}.npy", x)
    return root, run


def test_cli_bridge_prints_the_table_and_saves_loadable_maps(bridge_run, tmp_path, capsys, monkeypatch):
    root, run = bridge_run
    monkeypatch.chdir(tmp_path)
    assert main(["bridge", str(run), "--ref", "0", "--candidate", "-1", "--save", "maps", "--curve"]) == 0
    out = capsys.readouterr().out
    assert "bridge orthogonal index" in out and "120 held out" in out
    saved = bridge.load("maps/image-orthogonal-index")
    assert saved.direction == "index" and saved.n_fit == 120
    table = (tmp_path / "maps" / "bridge.csv").read_text()
    assert "cross" in table and (tmp_path / "maps" / "learning_curve.csv").exists()
    # the same numbers from bare arrays
    args = [f"--{s}-{m}={root / (s + '_' + m + '.npy')}" for s in ("ref", "cand") for m in ("image", "text")]
    assert main(["bridge", *args, "--method", "orthogonal", "--direction", "index"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("bridge orthogonal index")]
    assert line and line[0] in out


@pytest.mark.parametrize("case, needle", [
    ("too_small", "too few"),
    ("mismatch", "shape"),
    ("one_modality", "lack"),
    ("unknown_stage", "stage"),
])
def test_cli_bridge_bad_input_exits_2_with_one_line_and_writes_nothing(bridge_run, tmp_path, capsys, monkeypatch, case, needle):
    root, run = bridge_run
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "short.npy", np.load(root / "cand_image.npy")[:-3])
    argv = {
        "too_small": ["bridge", str(run), "--fit-fraction", "0.001"],
        "mismatch": ["bridge", f"--ref-image={root / 'ref_image.npy'}", f"--cand-image={tmp_path / 'short.npy'}",
                     f"--ref-text={root / 'ref_text.npy'}", f"--cand-text={root / 'cand_text.npy'}"],
        "one_modality": ["bridge", f"--ref-image={root / 'ref_image.npy'}", f"--cand-image={root / 'cand_image.npy'}"],
        "unknown_stage": ["bridge", str(run), "--candidate", "nope"],
    }[case]
    assert main([*argv, "--save", "maps"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert sorted(os.listdir(tmp_path)) == ["short.npy"]


def test_cli_bridge_saves_one_folder_per_probe_set(tmp_path, capsys):
    a, _ = clip_like(n=160, d=24, seed=1)
    b, _ = clip_like(n=160, d=24, seed=2)
    r = planted_rotation(24, [45.0] * 8, seed=3)
    probes = [ProbeSet.from_pairs(p, [f"{p} {i}" for i in range(160)]) for p in ("p1", "p2")]
    run = write_run(tmp_path / "run", probes, {"s0": {"p1": a, "p2": b}, "s1": {"p1": rotated(a, r), "p2": rotated(b, r)}})
    assert main(["bridge", str(run), "--method", "ridge", "--direction", "query", "--save", str(tmp_path / "maps")]) == 0
    assert capsys.readouterr().out.count("bridge ridge query") == 2
    for p in ("p1", "p2"):
        assert sorted(os.listdir(tmp_path / "maps" / p)) == ["bridge.csv", "image-ridge-query.json", "image-ridge-query.npy",
                                                             "text-ridge-query.json", "text-ridge-query.npy"]
        assert bridge.load(tmp_path / "maps" / p / "text-ridge-query").ridge == pytest.approx(0.01)


def test_bridge_reference_script_on_planted_runs(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bridge_reference", Path(__file__).resolve().parents[1] / "experiments" / "bridge_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ref, _ = clip_like(n=120, d=16, seed=11)
    probe = ProbeSet.from_pairs("google_seen", [f"c{i}" for i in range(120)])
    for mode, theta in (("finetune", 60.0), ("modx", 20.0)):
        stages = {"stage0": {"google_seen": ref},
                  "stage1": {"google_seen": rotated(ref, planted_rotation(16, [theta / 2] * 6, seed=1))},
                  "stage2": {"google_seen": rotated(ref, planted_rotation(16, [theta] * 6, seed=1))}}
        write_run(tmp_path / "runs" / "seed0" / mode, probe, stages, metadata={"model": "toy"})
    assert script.main(["--work-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "bridge_reference.csv")
    assert set(table["stage_b"]) == {"stage1", "stage2"} and set(table["mode"]) == {"finetune", "modx"}
    best = table[(table["setting"] == "bridge orthogonal index") & (table["stage_b"] == "stage2")]
    assert (best["t2i_R@1_recovery"] >= 0.94).all() and (best["image_agreement"] >= 0.95).all()  # 60 held-out items: one flip is 3%
    curve = pd.read_csv(tmp_path / "out" / "bridge_reference_curve.csv")
    assert set(curve["calibration_images"]) == {50, 60}  # 100 and 300 exceed the 60 held-in images
    text = (tmp_path / "out" / "bridge_reference.md").read_text()
    assert "Mod-X plus a bridge" in text and "orthogonal, index" in text


# ---------------------------------------------------------------- the registered family: analysis, report, compare, check


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    """One run whose last stage is the first under a common rotation (a bridge recovers it) and one whose last stage
    is an unrelated model of the same items (a d x d map cannot recover it: re-indexing is needed)."""
    root = tmp_path_factory.mktemp("family")
    ref, _ = clip_like(n=600, d=24)
    other, _ = clip_like(n=600, d=24, seed=7)
    ps = ProbeSet.from_pairs("val", [f"caption {i}" for i in range(600)])
    turned = rotated(ref, planted_rotation(24, [60.0] * 8, seed=3))
    ok = write_run(root / "ok", ps, {"s0": {"val": ref}, "s1": {"val": turned}})
    bad = write_run(root / "bad", ps, {"s0": {"val": ref}, "s1": {"val": other}})
    return ref, turned, ok, bad


def test_bridge_family_in_the_analysis_recovers_a_planted_rotation(family_runs):
    from spatial_disorder.analysis import analyze_arrays

    ref, turned, _, _ = family_runs
    a = analyze_arrays(ref, turned)
    assert a.value("bridge_t2i_R@1_recovery") >= 0.98 and a.value("bridge_i2t_R@1_recovery") >= 0.98
    assert a.value("bridge_image_agreement") > 0.95 and a.value("bridge_text_agreement") > 0.95
    assert a.value("cross_t2i_R@1") < 0.5 * a.value("heldout_new_t2i_R@1")  # the unmapped upgrade breaks retrieval
    direct = mb.bridge_metrics(ref, turned, np.arange(600), seed=0)  # the engine reuses cached pieces: same numbers
    for name in ("bridge_t2i_R@1", "cross_i2t_R@5", "heldout_old_t2i_R@1", "bridge_text_agreement", "bridge_t2i_compatible"):
        assert a.value(name) == pytest.approx(direct[name]), name
    curve = a.bridge_curve
    assert sorted(set(curve["calibration_images"])) == [50, 100, 300]
    assert set(curve["method"]) == {"orthogonal", "ridge"} and (curve["stage_a"] == "reference").all()
    lc = mb.learning_curve(ref, turned, np.arange(600))
    assert curve["t2i_R@1_recovery"].to_numpy() == pytest.approx(lc["t2i_R@1_recovery"].to_numpy())


def test_bridge_section_metrics_json_compare_and_check(family_runs, tmp_path, monkeypatch):
    import jsonschema

    from spatial_disorder.analysis import analyze_run
    from spatial_disorder.report import compare_runs, make_report
    from spatial_disorder.report.metrics_json import json_schema
    from spatial_disorder.run import open_run

    _, _, ok, bad = family_runs
    run = open_run(ok)
    analysis = analyze_run(run)
    report = make_report(analysis, run)
    out = report.write(tmp_path / "report")
    html = report.html[report.html.index("id='upgrade'"):]
    assert "Upgrade without re-indexing" in html and "bridged old index" in html and "cross (no map)" in html
    fig = next(f for f in report.figures if f.key == "bridge_curve_val")
    assert fig.section == "upgrade" and "300 calibration images" in fig.reading
    doc = json.loads((out / "metrics.json").read_text())
    jsonschema.validate(doc, json_schema())
    assert len(doc["bridge_curve"]) == len(analysis.bridge_curve) == 6
    assert doc["metrics"]["bridge_t2i_R@1_recovery"]["family"] == "bridge"
    assert (out / "tables" / "bridge_curve.csv").is_file()
    # compare: the recovery panels and rows
    cmp = compare_runs([run, open_run(bad)], [analysis, analyze_run(open_run(bad))])
    assert {"bridge_t2i_R@1_recovery", "bridge_image_agreement"} <= set(cmp.summary["metric"])
    assert "bridge_t2i_R@1_recovery" in cmp.html
    # check: CI can say "re-index needed"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reindex.toml").write_text('[[check]]\nmetric = "bridge_t2i_R@1_recovery"\nmin = 0.95\n'
                                           '[[check]]\nmetric = "bridge_i2t_R@1_recovery"\nmin = 0.95\n')
    assert main(["check", str(ok), "--thresholds", "reindex.toml"]) == 0
    assert main(["check", str(bad), "--thresholds", "reindex.toml"]) == 1
