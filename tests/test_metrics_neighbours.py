import numpy as np
import pytest

from spatial_disorder.errors import InputError
from spatial_disorder.knn import available_backends
from spatial_disorder.metrics.neighbours import knn_overlap, overlap_from_indices, summarise_overlap

BACKENDS = [b for b in ("numpy", "faiss", "torch") if b in available_backends()]


def clusters(n_clusters=6, k=4, d=12, seed=0):
    """Tight, far-apart clusters of k + 1 items: each item's k neighbours are exactly its cluster mates."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:n_clusters] * 10
    x = np.repeat(centres, k + 1, axis=0) + 0.01 * rng.normal(size=(n_clusters * (k + 1), d))
    return x, np.repeat(np.arange(n_clusters), k + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_planted_neighbour_shuffle(backend):
    k = 4
    a, label = clusters(k=k)
    x, y = 0, 7  # x in cluster 0, y in cluster 1: swap their embeddings
    b = a.copy()
    b[[x, y]] = a[[y, x]]
    ov = knn_overlap(a, b, k=k, backend=backend)
    expected = np.ones(len(a))
    expected[[x, y]] = 0.0
    expected[(label <= 1) & ~np.isin(np.arange(len(a)), [x, y])] = (k - 1) / k
    np.testing.assert_allclose(ov, expected)


def test_identical_stages_overlap_one():
    a = np.random.default_rng(1).normal(size=(80, 6))
    assert np.all(knn_overlap(a, a.copy(), k=5) == 1.0)


def test_overlap_from_indices_and_symmetry():
    ia = np.array([[1, 2, 3], [0, 2, 3]])
    ib = np.array([[3, 4, 5], [3, 2, 0]])
    np.testing.assert_allclose(overlap_from_indices(ia, ib), [1 / 3, 1.0])
    np.testing.assert_allclose(overlap_from_indices(ib, ia), overlap_from_indices(ia, ib))


def test_ci_covers_sample_and_shrinks_to_mean_when_exact():
    v = np.random.default_rng(2).uniform(size=500)
    exact = summarise_overlap(v)
    assert exact.ci_low == exact.mean == exact.ci_high and not exact.sampled
    s = summarise_overlap(v[:100], population=500)
    assert s.sampled and s.ci_low < s.mean < s.ci_high and s.n_items == 100


def test_fewer_items_than_k():
    a = np.random.default_rng(3).normal(size=(5, 3))
    with pytest.raises(InputError, match="k=10"):
        knn_overlap(a, a, k=10)
    with pytest.raises(InputError, match="items"):
        knn_overlap(a, a[:4], k=2)
