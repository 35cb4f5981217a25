import numpy as np
import pytest

from spatial_disorder.errors import InputError
from spatial_disorder.knn import as_unit_rows, available_backends, get_backend

BACKENDS = [b for b in ("numpy", "faiss", "torch") if b in available_backends()]


def brute_topk(q, db, k, exclude_self=False):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    db = db / np.linalg.norm(db, axis=1, keepdims=True)
    s = q.astype(np.float64) @ db.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_topk_matches_brute_force(name, exclude_self):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(257, 24)).astype(np.float32)
    scores, idx = get_backend(name).topk(x, x, 7, exclude_self=exclude_self)
    ref = brute_topk(x, x, 7, exclude_self)
    assert (idx == ref).mean() > 0.999  # random data: no ties
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    if exclude_self:
        assert not (idx == np.arange(257)[:, None]).any()


def test_exclude_self_with_query_subset():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 8))
    rows = np.array([5, 17, 99])
    _, idx = get_backend("numpy").topk(x[rows], x, 4, exclude_self=True, query_rows=rows)
    ref = brute_topk(x, x, 4, exclude_self=True)[rows]
    np.testing.assert_array_equal(idx, ref)


def test_auto_reports_its_choice():
    backend = get_backend("auto")
    assert backend.name in available_backends()
    assert backend.name == ("faiss" if "faiss" in available_backends() else backend.name)


def test_ivf_recall_is_high_on_clustered_data():
    if "faiss" not in available_backends():
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(20, 32))
    x = centres[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 32))
    _, approx = get_backend("faiss-ivf", nprobe=8).topk(x, x, 10, exclude_self=True)
    _, exact = get_backend("faiss").topk(x, x, 10, exclude_self=True)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(approx, exact)])
    assert recall > 0.8


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[1.0, 0.0], [0.0, 0.0]]), "zero vector"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or inf"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or inf"),
        (np.zeros((0, 3)), "non-empty"),
        (np.ones(3), "non-empty"),
    ],
)
def test_bad_rows_raise_input_error(bad, match):
    with pytest.raises(InputError, match=match):
        as_unit_rows(bad, "image")


def test_k_too_large_and_dimension_mismatch():
    x = np.eye(4)
    with pytest.raises(InputError, match="only 3 other"):
        get_backend("numpy").topk(x, x, 4, exclude_self=True)
    with pytest.raises(InputError, match="dimension"):
        get_backend("numpy").topk(x, np.eye(5), 1)
    with pytest.raises(InputError, match="unknown kNN backend"):
        get_backend("nope")


def test_as_unit_rows_accepts_float16_and_memmap(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    out = as_unit_rows(mm, block=7)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def brute_self_topk(x, k):
    """Float64 reference: score descending, ties by lower index, the item itself excluded."""
    s = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(s, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), s.shape), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, axis=1), order


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("n, k, block", [(300, 7, 64), (257, 10, 4096), (40, 5, 3), (12, 11, 4)])
def test_self_topk_matches_brute_force(name, n, k, block):
    rng = np.random.default_rng(n + k)
    x = as_unit_rows(rng.normal(size=(n, 16)))
    scores, idx = get_backend(name).self_topk(x, k, block=block)
    ref_s, ref_i = brute_self_topk(x, k)
    assert (idx == ref_i).mean() > 0.999  # random data: no ties
    np.testing.assert_allclose(scores, ref_s, atol=1e-6)
    assert not (idx == np.arange(n)[:, None]).any()


def tied_rows(seed):
    """Unit rows with entries in {0, +-1/2, +-1}: every dot product is exact, so ties are real ties."""
    rng = np.random.default_rng(seed)
    half = rng.choice([-0.5, 0.5], size=(12, 4))
    axes = np.eye(4)[rng.integers(0, 4, 8)] * rng.choice([-1.0, 1.0], size=(8, 1))
    base = np.vstack([half, axes])
    return base[rng.integers(0, len(base), 90)].astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_self_topk_with_ties(seed):
    x = tied_rows(seed)
    k = 8
    ref_s, ref_i = brute_self_topk(x, k)
    for block in (13, 4096):  # several blocks, and one block holding everything
        s_np, i_np = get_backend("numpy").self_topk(x, k, block=block)
        np.testing.assert_array_equal(i_np, ref_i)  # numpy merge: ties keep the lower index
        np.testing.assert_array_equal(s_np, ref_s.astype(np.float32))
    if "faiss" in available_backends():
        fb = get_backend("faiss")
        s_f, i_f = fb.self_topk(x, k, block=13)
        s_q, _ = fb.topk(x, x, k, exclude_self=True, normalized=True)
        np.testing.assert_array_equal(s_f, ref_s.astype(np.float32))  # same scores as the reference
        np.testing.assert_array_equal(s_f, s_q)  # and as faiss's own search (tie order is faiss's heap order)
        full = x.astype(np.float64) @ x.astype(np.float64).T
        np.testing.assert_array_equal(np.take_along_axis(full, i_f, axis=1), s_f)  # each index has its score
        assert all(len(set(r)) == k for r in i_f) and not (i_f == np.arange(len(x))[:, None]).any()


@pytest.mark.parametrize("name", [b for b in ("numpy", "faiss", "torch") if b in available_backends()])
def test_similarity_tiles_cover_the_product_once(name):
    rng = np.random.default_rng(4)
    q = rng.normal(size=(2100, 6)).astype(np.float32)  # 2 row tiles (2048 + 52) x 3 column tiles (4096 x 2 + 10)
    db = rng.normal(size=(8202, 6)).astype(np.float32)
    full = np.full((len(q), len(db)), np.nan, dtype=np.float32)
    seen = np.zeros(full.shape, dtype=np.int8)
    for r0, r1, c0, c1, tile in get_backend(name).similarity_tiles(q, db):
        assert tile.shape == (r1 - r0, c1 - c0)
        full[r0:r1, c0:c1] = tile  # copied: the tile buffer is reused
        seen[r0:r1, c0:c1] += 1
    assert (seen == 1).all()
    np.testing.assert_allclose(full, q @ db.T, rtol=1e-5, atol=1e-5)
