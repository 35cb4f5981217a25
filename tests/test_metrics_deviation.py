import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spatial_disorder.errors import InputError
from spatial_disorder.knn import NumpyBackend
from spatial_disorder.metrics.deviation import (
    contrastive_kl,
    flips,
    intermodal_rotation,
    modality_gap,
    paired_angles,
    rotation_mismatch,
)
from spatial_disorder.synthetic import planted_rotation


class _TinyTiles(NumpyBackend):
    def similarity_tiles(self, queries, database, rows=7, cols=5):
        yield from super().similarity_tiles(queries, database, rows=rows, cols=cols)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_kl(ia, ta, ib, tb, tau):
    def logsm(s):
        s = s / tau
        s = s - s.max(axis=1, keepdims=True)
        return s - np.log(np.exp(s).sum(axis=1, keepdims=True))

    out = []
    for sa, sb in ((unit(ia) @ unit(ta).T, unit(ib) @ unit(tb).T), (unit(ta) @ unit(ia).T, unit(tb) @ unit(ib).T)):
        la, lb = logsm(sa), logsm(sb)
        out.append(np.mean(np.sum(np.exp(la) * (la - lb), axis=1)))
    return out


def test_paired_angles_and_gap_known_answer():
    img = np.array([[1.0, 0.0], [0.0, 2.0]])
    txt = np.array([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    t2i = np.array([0, 1, 1])
    np.testing.assert_allclose(paired_angles(img, txt, t2i), [45.0, 0.0, 90.0], atol=1e-6)
    centre_i = np.array([0.5, 0.5])
    centre_t = (np.array([1, 1]) / np.sqrt(2) + np.array([0, 1]) + np.array([-1, 0])) / 3
    assert modality_gap(img, txt) == pytest.approx(np.linalg.norm(centre_i - centre_t), abs=1e-6)


def test_rotation_mismatch_and_flips():
    np.testing.assert_allclose(rotation_mismatch([10.0, 2.0], [1.0, 2.0, 3.0], [0, 1, 1]), [9.0, 0.0, -1.0])
    lost, gained = flips([True, True, False, False], [True, False, True, False])
    assert lost.tolist() == [False, True, False, False] and gained.tolist() == [False, False, True, False]


def test_intermodal_rotation_recovers_the_relative_rotation():
    r1 = planted_rotation(10, [25.0, 5.0], seed=1)
    r2 = planted_rotation(10, [12.0], seed=2)
    res = intermodal_rotation(r1, r1)
    assert res.geodesic_deg < 1e-5
    rel = intermodal_rotation(r1, r1 @ r2)  # text moved by an extra r2
    assert rel.max_deg == pytest.approx(12.0, abs=1e-6)


def test_contrastive_kl_matches_brute_force_and_is_zero_for_identical_stages():
    rng = np.random.default_rng(0)
    ia, ta = rng.normal(size=(30, 8)), rng.normal(size=(45, 8))
    ib, tb = ia + 0.3 * rng.normal(size=ia.shape), ta + 0.3 * rng.normal(size=ta.shape)
    for tau in (0.01, 0.5):
        kl = contrastive_kl(ia, ta, ib, tb, temperature=tau, backend="numpy")
        ref_i, ref_t = brute_kl(ia, ta, ib, tb, tau)
        assert kl.i2t == pytest.approx(ref_i, rel=1e-3, abs=1e-6)
        assert kl.t2i == pytest.approx(ref_t, rel=1e-3, abs=1e-6)
        assert kl.n_rows_i2t == 30 and kl.n_rows_t2i == 45
    tiled = contrastive_kl(ia, ta, ib, tb, temperature=0.05, backend=_TinyTiles())  # rows cut across many tiles
    ref_i, ref_t = brute_kl(ia, ta, ib, tb, 0.05)
    assert tiled.i2t == pytest.approx(ref_i, rel=1e-3, abs=1e-6) and tiled.t2i == pytest.approx(ref_t, rel=1e-3, abs=1e-6)
    same = contrastive_kl(ia, ta, ia.copy(), ta.copy())
    assert same.mean == pytest.approx(0.0, abs=1e-9)
    sampled = contrastive_kl(ia, ta, ib, tb, exact_max=10, sample_rows=8, seed=3)
    assert sampled.n_rows_i2t == 8 and sampled.n_rows_t2i == 8
    with pytest.raises(InputError, match="temperature"):
        contrastive_kl(ia, ta, ib, tb, temperature=0)
    with pytest.raises(InputError, match="shape"):
        contrastive_kl(ia, ta, ib[:5], tb)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), angle=st.floats(0.0, 180.0))
def test_common_rotation_leaves_cross_quantities_unchanged(seed, angle):
    rng = np.random.default_rng(seed)
    img, txt = rng.normal(size=(12, 6)), rng.normal(size=(20, 6))
    t2i = rng.integers(0, 12, 20)
    q = planted_rotation(6, [angle, angle / 3], seed=seed)
    np.testing.assert_allclose(paired_angles(img, txt, t2i), paired_angles(img @ q, txt @ q, t2i), atol=1e-4)
    assert modality_gap(img, txt) == pytest.approx(modality_gap(img @ q, txt @ q), abs=1e-6)
    ib, tb = img + 0.5 * rng.normal(size=img.shape), txt + 0.5 * rng.normal(size=txt.shape)
    base = contrastive_kl(img, txt, ib, tb, temperature=0.1)
    rot = contrastive_kl(img @ q, txt @ q, ib @ q, tb @ q, temperature=0.1)
    assert rot.mean == pytest.approx(base.mean, rel=1e-3, abs=1e-6)
