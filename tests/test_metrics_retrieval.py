import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spatial_disorder.errors import InputError
from spatial_disorder.knn import NumpyBackend, available_backends
from spatial_disorder.metrics.retrieval import TIE_TOL, retrieval_ranks, retrieval_scores


def brute_ranks(img, txt, t2i):
    """Reference: float64 cosines, explicit loops, ties pessimistic within the documented tolerance (TIE_TOL: a wrong
    item whose cosine is within 1e-5 of the correct one ranks ahead of it)."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    s = txt @ img.T
    t_rank = []
    for j in range(len(txt)):
        correct = s[j, t2i[j]]
        wrong = [s[j, i] for i in range(len(img)) if i != t2i[j]]
        t_rank.append(1 + sum(w >= correct - TIE_TOL for w in wrong))
    i_rank = []
    for i in range(len(img)):
        mine = [j for j in range(len(txt)) if t2i[j] == i]
        best = max(s[j, i] for j in mine)
        i_rank.append(1 + sum(s[j, i] >= best - TIE_TOL for j in range(len(txt)) if t2i[j] != i))
    return np.array(i_rank), np.array(t_rank)


def test_hand_computed_example_with_ties():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # images 0 and 1 identical: tie
    txt = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    t2i = np.array([0, 2, 1, 2])
    ranks = retrieval_ranks(img, txt, t2i, backend="numpy")
    # caption 0 ties with wrong image 1 -> rank 2; caption 2 ties with wrong image 0 -> rank 2
    np.testing.assert_array_equal(ranks.t2i, [2, 1, 2, 1])
    # image 0: best caption 0 (cos 1); caption 2 of image 1 has cos 0.995 < 1 -> rank 1
    # image 1: same direction as image 0; caption 0 (wrong) ties its best -> rank 2
    np.testing.assert_array_equal(ranks.i2t, [1, 2, 1])
    scores = retrieval_scores(img, txt, t2i, backend="numpy")
    assert scores["t2i_R@1"] == pytest.approx(50.0)
    assert scores["i2t_R@1"] == pytest.approx(200 / 3)
    assert scores["t2i_medr"] == 1.5 and scores["i2t_meanr"] == pytest.approx(4 / 3)


@pytest.mark.parametrize("backend", [b for b in ("numpy", "faiss", "torch") if b in available_backends()])
def test_matches_brute_force_many_captions_and_ties(backend):
    rng = np.random.default_rng(0)
    n_img = 40
    img = rng.integers(-2, 3, size=(n_img, 6)).astype(np.float64)  # small integers -> many exact ties
    img[img.sum(axis=1) == 0, 0] = 1.0
    img[img.std(axis=1) == 0, 1] += 1.0
    img[5] = img[4]  # duplicated image: guaranteed tie
    caps = rng.integers(1, 6, size=n_img)
    t2i = np.repeat(np.arange(n_img), caps)
    txt = img[t2i] + rng.integers(-1, 2, size=(len(t2i), 6))
    txt[np.abs(txt).sum(axis=1) == 0, 0] = 1.0
    ranks = retrieval_ranks(img, txt, t2i, backend=backend)
    ref_i, ref_t = brute_ranks(img, txt, t2i)
    np.testing.assert_array_equal(ranks.i2t, ref_i)
    np.testing.assert_array_equal(ranks.t2i, ref_t)
    scores = retrieval_scores(img, txt, t2i, backend=backend)
    assert scores["i2t_R@5"] == pytest.approx(100 * np.mean(ref_i <= 5))
    assert scores["t2i_R@10"] == pytest.approx(100 * np.mean(ref_t <= 10))
    assert scores["t2i_medr"] == pytest.approx(np.median(ref_t))
    assert scores["rsum"] == pytest.approx(sum(scores[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_img=st.integers(2, 12), caps=st.integers(1, 4))
@example(seed=7679, n_img=12, caps=3)  # a wrong image 2e-6 above the correct one: a tie under the documented rule
def test_property_matches_brute_force(seed, n_img, caps):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n_img, 5))
    t2i = np.repeat(np.arange(n_img), caps)
    txt = img[t2i] + rng.normal(size=(len(t2i), 5))
    ranks = retrieval_ranks(img, txt, t2i, backend="numpy")
    ref_i, ref_t = brute_ranks(img, txt, t2i)
    np.testing.assert_array_equal(ranks.i2t, ref_i)
    np.testing.assert_array_equal(ranks.t2i, ref_t)


def test_identical_pairs_are_perfect():
    img = np.eye(8)
    scores = retrieval_scores(img, img.copy(), np.arange(8))
    assert scores["i2t_R@1"] == 100.0 and scores["t2i_R@1"] == 100.0 and scores["rsum"] == 600.0


def test_bad_inputs():
    img = np.eye(3)
    with pytest.raises(InputError, match="text_to_image"):
        retrieval_scores(img, img, np.array([0, 1]))
    with pytest.raises(InputError, match="outside"):
        retrieval_scores(img, img, np.array([0, 1, 3]))
    with pytest.raises(InputError, match="dimension"):
        retrieval_scores(img, np.eye(3, 4), np.arange(3))
    with pytest.raises(InputError, match="at least one caption"):
        retrieval_scores(img, img, np.array([0, 0, 1]))
    with pytest.raises(InputError, match="NaN"):
        retrieval_scores(np.array([[np.nan, 1, 0], [0, 1, 0], [0, 0, 1.0]]), img, np.arange(3))


def test_sampled_ranks_equal_exact_ranks_on_the_sample():
    from spatial_disorder.knn import as_unit_rows
    from spatial_disorder.metrics.retrieval import sampled_ranks

    rng = np.random.default_rng(5)
    img = rng.integers(-2, 3, size=(60, 5)).astype(np.float64)
    img[np.abs(img).sum(axis=1) == 0, 0] = 1.0
    img[7] = img[3]
    t2i = np.repeat(np.arange(60), rng.integers(1, 5, size=60))
    txt = img[t2i] + rng.integers(-1, 2, size=(len(t2i), 5))
    txt[np.abs(txt).sum(axis=1) == 0, 1] = 1.0
    full = retrieval_ranks(img, txt, t2i, backend="numpy")
    rows_i, rows_t = np.array([0, 3, 7, 59]), np.sort(rng.choice(len(t2i), 30, replace=False))
    part = sampled_ranks(as_unit_rows(img), as_unit_rows(txt), t2i, rows_i, rows_t, backend="numpy")
    np.testing.assert_array_equal(part.i2t[rows_i], full.i2t[rows_i])
    np.testing.assert_array_equal(part.t2i[rows_t], full.t2i[rows_t])
    assert np.isnan(part.i2t).sum() == 56 and np.isnan(part.t2i).sum() == len(t2i) - 30


class _TinyTiles(NumpyBackend):
    """A numpy backend whose similarity tiles are 7 x 5, so every tile edge cuts through caption groups."""

    def similarity_tiles(self, queries, database, rows=7, cols=5):
        yield from super().similarity_tiles(queries, database, rows=rows, cols=cols)


def test_tiled_passes_match_brute_force_across_tile_edges():
    from spatial_disorder.knn import as_unit_rows
    from spatial_disorder.metrics.retrieval import sampled_ranks

    rng = np.random.default_rng(11)
    n_img = 23
    img = rng.integers(-2, 3, size=(n_img, 5)).astype(np.float64)
    img[np.abs(img).sum(axis=1) == 0, 0] = 1.0
    img[9] = img[8]  # a tie straddling a tile edge (columns 5-9)
    t2i = np.repeat(np.arange(n_img), rng.integers(1, 5, size=n_img))
    txt = img[t2i] + rng.integers(-1, 2, size=(len(t2i), 5))
    txt[np.abs(txt).sum(axis=1) == 0, 0] = 1.0
    ref_i, ref_t = brute_ranks(img, txt, t2i)
    ranks = retrieval_ranks(img, txt, t2i, backend=_TinyTiles())
    np.testing.assert_array_equal(ranks.i2t, ref_i)
    np.testing.assert_array_equal(ranks.t2i, ref_t)
    rows_i, rows_t = np.array([0, 4, 8, 9, 15, 22]), np.arange(0, len(t2i), 3)
    sampled = sampled_ranks(as_unit_rows(img), as_unit_rows(txt), t2i, rows_i, rows_t, backend=_TinyTiles())
    np.testing.assert_array_equal(sampled.i2t[rows_i], ref_i[rows_i])
    np.testing.assert_array_equal(sampled.t2i[rows_t], ref_t[rows_t])
    assert np.isnan(np.delete(sampled.i2t, rows_i)).all()


def test_threaded_counting_equals_one_pass():
    from concurrent.futures import ThreadPoolExecutor

    from spatial_disorder.metrics.retrieval import _count_at_least

    rng = np.random.default_rng(2)
    sims = rng.normal(size=(37, 23)).astype(np.float32)
    sims[3, 4] = -np.inf
    row_thr, col_thr = rng.normal(size=37).astype(np.float32), rng.normal(size=23).astype(np.float32)
    want_rows = (sims >= row_thr[:, None]).sum(axis=1)
    want_cols = (sims >= col_thr[None, :]).sum(axis=0)
    with ThreadPoolExecutor(3) as pool:
        rows, cols = _count_at_least(sims, row_thr, col_thr, pool, workers=3, min_chunk=1)  # 3 row chunks
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(cols, want_cols)
    rows1, cols1 = _count_at_least(sims, row_thr, col_thr)
    np.testing.assert_array_equal(rows1, want_rows)
    np.testing.assert_array_equal(cols1, want_cols)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_img=st.integers(2, 30), caps=st.integers(1, 3), ties=st.booleans())
def test_one_direction_gives_the_same_ranks_as_both(seed, n_img, caps, ties):
    """Counting one direction only (the bridge's cross-model passes) must not change that direction's ranks; checked
    against a brute-force count with the pessimistic tie rule, including exact ties (duplicated rows)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n_img, 6)).astype(np.float32)
    if ties:
        img[1] = img[0]
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    t2i = np.repeat(np.arange(n_img), caps)
    txt = img[t2i] + 0.8 * rng.normal(size=(len(t2i), 6)).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    both = retrieval_ranks(img, txt, t2i, normalized=True, backend="numpy")
    t2i_only = retrieval_ranks(img, txt, t2i, normalized=True, backend="numpy", directions=("t2i",))
    i2t_only = retrieval_ranks(img, txt, t2i, normalized=True, backend="numpy", directions=("i2t",))
    np.testing.assert_array_equal(t2i_only.t2i, both.t2i)
    np.testing.assert_array_equal(i2t_only.i2t, both.i2t)
    assert len(t2i_only.i2t) == 0 and len(i2t_only.t2i) == 0
    sims = txt.astype(np.float64) @ img.T.astype(np.float64)
    own = sims[np.arange(len(t2i)), t2i]
    brute = 1 + np.array([np.sum(np.delete(sims[j], t2i[j]) >= own[j] - 1e-5) for j in range(len(t2i))])
    np.testing.assert_array_equal(t2i_only.t2i, brute)


def test_directions_must_be_named():
    img = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="directions"):
        retrieval_ranks(img, img, np.arange(3), normalized=True, directions=("t2t",))
