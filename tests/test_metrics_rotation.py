import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spatial_disorder.errors import InputError
from spatial_disorder.metrics.rotation import distribution, rotation_angles, topology_change
from spatial_disorder.synthetic import planted_rotation


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_topology(a, b):
    a, b = unit(a), unit(b)
    ca = np.degrees(np.arccos(np.clip(a @ a.T, -1, 1)))
    cb = np.degrees(np.arccos(np.clip(b @ b.T, -1, 1)))
    iu = np.triu_indices(len(a), 1)
    return np.abs(ca - cb)[iu], np.abs(ca - cb).sum(axis=1) / (len(a) - 1)


def test_rotation_angle_known_answer():
    a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    th = np.radians(37.0)
    b = np.array([[np.cos(th), np.sin(th), 0.0], [0.0, -1.0, 0.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(rotation_angles(a, b), [37.0, 180.0, 0.0], atol=1e-6)


def test_identical_stages_give_exact_zero():
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    assert np.all(rotation_angles(x, x.copy()) == 0.0)
    topo = topology_change(x, x.copy())
    assert topo.mean_deg == 0.0 and topo.exact and topo.n_pairs == 50 * 49 // 2


def test_rotation_matches_arccos_reference_on_random_rows():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    ref = np.degrees(np.arccos(np.einsum("ij,ij->i", unit(a), unit(b))))
    np.testing.assert_allclose(rotation_angles(a, b), ref, atol=1e-4)


def test_topology_exact_matches_brute_force_and_is_zero_under_rotation():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(120, 10))
    b = a + 0.3 * rng.normal(size=a.shape)
    topo = topology_change(a, b)
    ref_pairs, ref_items = brute_topology(a, b)
    assert topo.mean_deg == pytest.approx(ref_pairs.mean(), abs=1e-3)
    np.testing.assert_allclose(topo.per_item, ref_items, atol=1e-3)
    rotated = a @ planted_rotation(10, [40.0, 20.0], seed=3)
    assert topology_change(a, rotated).mean_deg < 1e-3  # rotation keeps every pair angle


def test_topology_sampled_estimates_the_exact_value():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(400, 8))
    b = a + 0.5 * rng.normal(size=a.shape)
    exact = topology_change(a, b)
    sampled = topology_change(a, b, exact_max=200, seed=1)
    assert not sampled.exact and sampled.n_pairs == 200 * 199 // 2 and len(sampled.items) == 200
    assert np.isfinite(sampled.per_item).sum() == 200
    np.testing.assert_allclose(sampled.per_item[sampled.items], brute_topology(a[sampled.items], b[sampled.items])[1], atol=1e-3)
    assert sampled.mean_deg == pytest.approx(exact.mean_deg, rel=0.05)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 30), d=st.integers(2, 6))
def test_symmetric_in_stages(seed, n, d):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    np.testing.assert_allclose(rotation_angles(a, b), rotation_angles(b, a), atol=1e-9)
    assert topology_change(a, b).mean_deg == pytest.approx(topology_change(b, a).mean_deg, abs=1e-9)


def test_distribution_and_errors():
    d = distribution(np.arange(11.0))
    assert d == {"mean": 5.0, "median": 5.0, "p10": 1.0, "p90": 9.0}
    with pytest.raises(InputError, match="items"):
        rotation_angles(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(InputError, match="dimension"):
        rotation_angles(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(InputError, match="zero vector"):
        rotation_angles(np.zeros((3, 2)), np.ones((3, 2)))


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 40), seed=st.integers(0, 1000))
def test_per_item_sums_of_the_upper_triangle_match_the_full_matrix(m, seed):
    from spatial_disorder.metrics.rotation import _pair_sums

    full = np.random.default_rng(seed).random((m, m))
    full = np.triu(full, 1) + np.triu(full, 1).T  # symmetric, zero diagonal
    np.testing.assert_allclose(_pair_sums(full[np.triu_indices(m, 1)], m), full.sum(axis=1), rtol=1e-12)
