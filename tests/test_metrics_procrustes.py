import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spatial_disorder.metrics.procrustes import procrustes, rotation_spectrum
from spatial_disorder.synthetic import planted_rotation


def data(n=400, d=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("angles", [[30.0, 12.5, 3.0], [90.0], [1.0, 0.5], [170.0, 45.0, 45.0]])
def test_planted_rotation_is_recovered_to_a_tenth_of_a_degree(angles):
    a = data()
    r = planted_rotation(16, angles, seed=7)
    b = (a.astype(np.float64) @ r).astype(np.float32)
    fit = procrustes(a, b)
    expected = np.sort(np.r_[angles, np.zeros(8 - len(angles))])[::-1]
    np.testing.assert_allclose(fit.angles_deg, expected, atol=0.1)
    assert fit.geodesic_deg == pytest.approx(np.sqrt(np.sum(np.square(angles))), abs=0.1)
    assert fit.max_deg == pytest.approx(max(angles), abs=0.1)
    assert fit.residual_frac < 1e-5
    np.testing.assert_allclose(fit.R, r, atol=1e-3)


def test_centred_fit_ignores_a_translation():
    a = data(seed=1)
    r = planted_rotation(16, [20.0], seed=2)
    shift = np.linspace(-0.3, 0.3, 16)
    b = a @ r + shift  # rows no longer unit: pass them as they are
    fit = procrustes(a, b, centred=True, normalized=True)
    assert fit.angles_deg[0] == pytest.approx(20.0, abs=0.1)
    assert fit.residual_frac < 1e-5
    assert procrustes(a, b, centred=False, normalized=True).residual_frac > 1e-3


def test_identical_and_reshaped_stages():
    a = data(seed=3)
    fit = procrustes(a, a.copy())
    assert fit.geodesic_deg < 1e-3 and fit.residual_frac == 0.0
    # a change that is not a rotation: shrink one axis -> residual well above zero
    b = a.copy()
    b[:, 0] *= 0.1
    assert procrustes(a, b).residual_frac > 0.5


def test_spectrum_of_a_reflection():
    r = np.diag([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(rotation_spectrum(r), [180.0, 0.0], atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_swapping_stages_gives_the_same_angles_and_residual(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(40, 5))
    b = a @ planted_rotation(5, [rng.uniform(0, 90)], seed=seed) + 0.3 * rng.normal(size=a.shape)
    f, g = procrustes(a, b), procrustes(b, a)
    np.testing.assert_allclose(f.angles_deg, g.angles_deg, atol=1e-5)
    assert f.residual_frac == pytest.approx(g.residual_frac, rel=1e-5)
    np.testing.assert_allclose(f.R.T, g.R, atol=1e-6)
