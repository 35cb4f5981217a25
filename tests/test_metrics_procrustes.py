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


# --- rotations fitted where the data live -------------------------------------------------------------------
from spatial_disorder.metrics.procrustes import (  # noqa: E402
    cross_products,
    gram,
    joint_rotations,
    principal_basis,
    rigid_residual_angles,
    rigid_share,
)
from spatial_disorder.metrics.rotation import rotation_angles  # noqa: E402
from spatial_disorder.synthetic import clip_like_cloud, plane_rotation  # noqa: E402


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clip_pair(theta, noise, n=3000, d=96, seed=0):
    """Image and text clouds shaped like CLIP embeddings (common mean, power-law spectrum, a modality gap), both
    turned by ``theta`` in the image cloud's main plane, each stage with its own isotropic noise per coordinate."""
    img, basis = clip_like_cloud(n, d, seed=seed)
    rng = np.random.default_rng(seed + 1)
    txt = unit(img + clip_like_cloud(n, d, seed=seed + 2, basis=basis)[0] * 0.3 + 0.3 * basis[:, 3])
    r = plane_rotation(basis[:, 1], basis[:, 2], theta)
    noisy = lambda x: unit(x + noise * rng.normal(size=x.shape))  # noqa: E731
    return (noisy(img), noisy(img @ r)), (noisy(txt), noisy(txt @ r)), basis, r


@pytest.mark.parametrize("theta", [12.0, 30.0])
def test_planted_main_plane_rotation_is_read_through_noise_on_a_clip_like_cloud(theta):
    (ai, bi), (at, bt), _, r = clip_pair(theta, noise=0.01)
    assert np.median(rotation_angles(unit(ai @ r), bi)) > 4.0  # beyond the planted rotation, noise moves items by degrees
    for a, b in ((ai, bi), (at, bt)):
        fit = procrustes(a, b)
        assert fit.angles_deg[0] == pytest.approx(theta, abs=1.0)
        assert fit.max_deg == pytest.approx(theta, abs=1.0)
        assert fit.geodesic_deg == pytest.approx(theta, abs=2.0)
        assert procrustes(a, b, centred=True).geodesic_deg == pytest.approx(theta, abs=2.0)
        assert fit.dim < 96 and 0.9 < fit.variance_held < 1.0
        assert np.linalg.det(fit.R) == pytest.approx(1.0, abs=1e-9)
        # the same data over all 96 directions: the empty ones turn arbitrarily and swamp the summary
        assert procrustes(a, b, floor=0.0).geodesic_deg > theta + 20
    joint = joint_rotations((cross_products(ai, bi), gram(bi)), (cross_products(at, bt), gram(bt)))
    assert joint.geodesic_deg <= 2.0 and joint.max_deg <= 2.0


def test_plane_shares_say_where_the_variance_is():
    (a, b), _, basis, _ = clip_pair(20.0, noise=0.0, n=2000, d=64)
    fit = procrustes(a, b)
    moment = (a.T @ a + b.T @ b) / (2 * len(a))
    main = basis[:, 1:3]
    expected = np.trace(main.T @ moment @ main) / np.trace(moment)
    assert fit.plane_share[0] == pytest.approx(expected, abs=0.01)  # the turned plane carries the main plane's variance
    assert fit.plane_share.sum() == pytest.approx(fit.variance_held, abs=1e-6)
    np.testing.assert_allclose(fit.angles_deg[1:], 0.0, atol=0.05)
    iso = procrustes(data(seed=4), data(seed=4) @ planted_rotation(16, [10.0], seed=1))
    assert iso.dim == 16 and iso.variance_held == 1.0  # an isotropic cloud keeps every direction


def test_principal_basis_keeps_directions_above_the_floor():
    moment = np.diag([5.0, 3.0, 1.0, 0.05, 0.0, 0.0])  # average variance 9.05 / 6
    basis, held = principal_basis(moment, floor=0.1)
    assert basis.shape == (6, 3) and held == pytest.approx(9.0 / 9.05)
    np.testing.assert_allclose(np.abs(basis.T @ np.eye(6)[:, :3]), np.eye(3), atol=1e-12)
    assert principal_basis(moment, floor=0.0)[0].shape == (6, 6)
    with pytest.raises(ValueError):
        principal_basis(moment, floor=1.5)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 40), exponent=st.floats(0.0, 3.0), floor=st.sampled_from([0.05, 0.1, 0.3]),
       empty=st.integers(0, 3), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_the_whole_space_shortcut_agrees_with_the_eigenvalues(seed, d, exponent, floor, empty, scale):
    """principal_basis skips the eigenvalues when a Cholesky factor says every direction is above the floor: on moments
    shaped like real embeddings (a power-law spectrum, a common mean, near-empty directions) it keeps exactly the
    directions the eigenvalues keep."""
    rng = np.random.default_rng(seed)
    n = 4 * d + 10
    spread = np.arange(1, d + 1) ** (-exponent / 2)
    spread[d - min(empty, d - 1):] *= 1e-4  # near-empty directions
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    x = (rng.normal(size=(n, d)) * spread + 0.5 * rng.normal(size=d)) @ q
    moment = scale * (x.T @ x) / n
    w = np.clip(np.linalg.eigvalsh(moment), 0.0, None)
    expected = int(np.sum(w >= floor * w.sum() / d))
    basis, held = principal_basis(moment, floor=floor)
    assert basis.shape == (d, expected)
    if expected == d:
        assert held == 1.0 and np.array_equal(basis, np.eye(d))
    else:
        assert held == pytest.approx(float(np.sort(w)[::-1][:expected].sum() / w.sum()), rel=1e-9)


def test_a_mirror_image_is_not_read_as_a_half_turn_through_an_empty_direction():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3)) * [1.0, 0.6, 1e-6]  # the third direction is empty
    b = a * [1.0, -1.0, 1.0]  # a mirror image in the plane: no rotation of the plane reproduces it
    # over all directions, a half turn about the first axis (through the empty one) "explains" it perfectly
    everywhere = procrustes(a, b, normalized=True, floor=0.0)
    assert everywhere.max_deg == pytest.approx(180.0, abs=1e-3) and everywhere.residual_frac < 1e-5
    fit = procrustes(a, b, normalized=True)  # where the data live: the plane only
    assert fit.dim == 2 and np.linalg.det(fit.R) == pytest.approx(1.0)
    assert fit.max_deg < 90.0
    assert fit.residual_frac > 0.3  # and the fit says plainly that no rotation explains the change


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), theta=st.floats(0.0, 40.0), scale=st.floats(0.1, 1.0))
def test_noise_in_near_empty_directions_moves_no_headline_figure(seed, theta, scale):
    n, d = 1000, 64
    (ai, bi), (at, bt), basis, _ = clip_pair(theta, noise=0.0, n=n, d=d, seed=seed)
    rng = np.random.default_rng(seed)
    tail = basis[:, -16:]  # the emptiest directions of the cloud
    share = 0.001 * scale  # the noise carries less than 0.1% of the variance

    def jitter(x):
        z = rng.normal(size=(len(x), 16)) @ tail.T
        return unit(x + z * np.sqrt(share / np.mean(np.sum(z**2, axis=1))))

    def headline(ai, bi, at, bt):
        f, c = procrustes(ai, bi), procrustes(ai, bi, centred=True)
        j = joint_rotations((cross_products(ai, bi), gram(bi)), (cross_products(at, bt), gram(bt)))
        return np.array([f.geodesic_deg, f.max_deg, c.geodesic_deg, c.max_deg, j.geodesic_deg, j.max_deg])

    clean = headline(ai, bi, at, bt)
    noisy = headline(jitter(ai), jitter(bi), jitter(at), jitter(bt))
    np.testing.assert_allclose(noisy, clean, atol=1.0)


def test_rigid_share_of_a_rotation_and_of_a_change_of_shape():
    a = data(n=600, d=16, seed=5)
    r = planted_rotation(16, [25.0, 10.0], seed=3)
    b = (a @ r).astype(np.float32)
    fit = procrustes(a, b)
    residual = rigid_residual_angles(a, b, fit)
    per_item, share = rigid_share(rotation_angles(a, b), residual)
    assert residual.max() < 0.05 and share == pytest.approx(1.0, abs=1e-4)
    assert np.nanmin(per_item) > 0.99
    # a change of shape (one axis shrunk, rows renormalised): the rotation explains little of it
    c = a.astype(np.float64).copy()
    c[:, :4] *= 0.2
    c = unit(c)
    rot = rotation_angles(a, c)
    _, shape_share = rigid_share(rot, rigid_residual_angles(a, c, procrustes(a, c)))
    assert shape_share < 0.5
    # items that did not move have no share
    per, _ = rigid_share(np.array([0.0, 10.0]), np.array([0.0, 5.0]))
    assert np.isnan(per[0]) and per[1] == pytest.approx(0.75)


# --- the faster paths give the reference answers --------------------------------------------------------------
from spatial_disorder.metrics.procrustes import proper_rotation  # noqa: E402


def kabsch_by_svd(k):
    """The reference: Kabsch's proper rotation from a full SVD."""
    u, _, vt = np.linalg.svd(k)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        u[:, -1] = -u[:, -1]
    return u @ vt


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.sampled_from([2, 3, 7, 40]), spread=st.floats(0.0, 6.0),
       reflect=st.booleans(), tiny=st.booleans())
def test_proper_rotation_matches_the_svd_reference(seed, d, spread, reflect, tiny):
    """Cross-moments as a fit sees them (a rotation of a spread-out second moment, plus noise), with a reflection and
    with nearly empty directions (where the eigen-path must hand over to the SVD)."""
    rng = np.random.default_rng(seed)
    scales = np.exp(-spread * rng.uniform(size=d))
    if tiny:
        scales[: max(1, d // 4)] *= 1e-9
    g = (rng.normal(size=(d, d)) * scales) @ (rng.normal(size=(d, d)) * scales).T / d + np.diag(scales**2)
    q = planted_rotation(d, [rng.uniform(0, 170)], seed=seed) if d > 1 else np.eye(d)
    if reflect:
        q = q @ np.diag(np.r_[-1.0, np.ones(d - 1)])
    k = g @ q + 1e-3 * rng.normal(size=(d, d)) * scales.max()
    r = proper_rotation(k)
    np.testing.assert_allclose(r @ r.T, np.eye(d), atol=1e-8)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-8)
    # the same maximum of tr(R^T K) as the SVD reference (the maximiser itself is not unique when K is singular)
    assert np.trace(r.T @ k) == pytest.approx(np.trace(kabsch_by_svd(k).T @ k), rel=1e-9, abs=1e-12)


def test_a_whole_space_fit_needs_no_basis_and_gives_the_full_fit():
    """When every direction holds data the subspace is the whole space: the shortcut (identity basis, no eigenvectors)
    must give exactly the fit over all directions."""
    rng = np.random.default_rng(4)
    a = data(n=600, d=12, seed=4)
    b = a @ planted_rotation(12, [25.0, 8.0], seed=5) + 0.01 * rng.normal(size=a.shape).astype(np.float32)
    fit, full = procrustes(a, b), procrustes(a, b, floor=0.0)
    assert fit.dim == 12 and np.array_equal(fit.basis, np.eye(12))
    np.testing.assert_allclose(fit.R, full.R, atol=1e-10)
    np.testing.assert_allclose(fit.angles_deg, full.angles_deg, atol=1e-8)
    np.testing.assert_allclose(fit.plane_share, full.plane_share, atol=1e-10)


def test_joint_rotations_reuse_the_modalities_own_fits_only_when_they_are_the_same_fits():
    from spatial_disorder.metrics.procrustes import joint_rotations, procrustes_from_products

    rng = np.random.default_rng(6)
    ia, ta = data(n=500, d=10, seed=6), data(n=700, d=10, seed=7)
    ib = ia @ planted_rotation(10, [20.0], seed=8) + 0.01 * rng.normal(size=ia.shape).astype(np.float32)
    tb = ta @ planted_rotation(10, [35.0], seed=9) + 0.01 * rng.normal(size=ta.shape).astype(np.float32)
    prods = [(cross_products(a, b), gram(b)) for a, b in ((ia, ib), (ta, tb))]
    own = tuple(procrustes_from_products(*p) for p in prods)
    fresh, reused = joint_rotations(*prods), joint_rotations(*prods, fitted=own)
    assert fresh.dim == 10 and reused.image is own[0]
    np.testing.assert_allclose(reused.angles_deg, fresh.angles_deg, atol=1e-8)
    # on a CLIP-like cloud the subspaces differ (a few of 48 directions): the own fits must not be taken
    ca, _ = clip_like_cloud(800, 48, seed=1)
    cb = ca @ planted_rotation(48, [15.0], seed=2)
    prods = [(cross_products(ca, cb), gram(cb))] * 2
    own = tuple(procrustes_from_products(*p) for p in prods)
    assert own[0].dim < 48
    assert joint_rotations(*prods, fitted=own).image is not own[0]
