"""The Mod-X term, the CLIP loss and feature distillation against references written from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from modx_helpers import random_unit  # noqa: E402

from modx.losses import Batch, ClipPiece, ModXPiece, clip_loss, feature_distill_loss, modx_loss, total_loss  # noqa: E402


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def ref_modx(si, st_, ti, tt, T=1.0, reduction="sum", include_diagonal=True):
    """Straight from the definition, row by row, in float64."""
    def direction(old, new):
        vals = []
        for r in range(old.shape[0]):
            if int(np.argmax(old[r])) != r:  # screening
                continue
            cols = [c for c in range(old.shape[1]) if include_diagonal or c != r]
            p = _softmax(old[r, cols] / T)
            q = _softmax(new[r, cols] / T)
            vals.append(float(np.sum(p * np.log(p / q))))  # KL(old || new)
        if not vals:
            return 0.0
        return sum(vals) if reduction == "sum" else sum(vals) / len(vals)

    old, new = ti @ tt.T, si @ st_.T
    return 0.5 * (direction(old, new) + direction(old.T, new.T))


def _t(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 9),
    T=st.sampled_from([0.05, 0.5, 1.0, 2.0]),
    reduction=st.sampled_from(["sum", "mean"]),
    include_diagonal=st.booleans(),
    noise=st.floats(0.0, 2.0),
)
def test_modx_matches_reference(seed, n, T, reduction, include_diagonal, noise):
    rng = np.random.default_rng(seed)
    ti = random_unit(rng, n, 6)
    tt = ti + noise * rng.normal(size=ti.shape)  # noise controls how many teacher rows pass screening
    tt /= np.linalg.norm(tt, axis=1, keepdims=True)
    si, st_ = random_unit(rng, n, 6), random_unit(rng, n, 6)
    got = modx_loss(_t(si), _t(st_), _t(ti), _t(tt), T, reduction, include_diagonal)
    want = ref_modx(si, st_, ti, tt, T, reduction, include_diagonal)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_screening_drops_rows_that_do_not_peak_on_the_diagonal():
    rng = np.random.default_rng(0)
    ti = random_unit(rng, 5, 8)
    tt = np.roll(ti, 1, axis=0)  # every teacher row peaks off the diagonal in both directions
    si, st_ = random_unit(rng, 5, 8), random_unit(rng, 5, 8)
    assert modx_loss(_t(si), _t(st_), _t(ti), _t(tt)).item() == 0.0
    # a teacher that pairs perfectly keeps every row: the term is then a positive sum of 2 x 5 KLs
    full = modx_loss(_t(si), _t(st_), _t(ti), _t(ti)).item()
    assert full > 0
    assert full == pytest.approx(ref_modx(si, st_, ti, ti), rel=1e-10)


def test_kl_direction_is_teacher_to_student():
    # one row pair, image->text only (text->image identical by symmetry of the 2 x 2 construction)
    ti, tt = np.eye(2), np.eye(2)  # teacher cosines = identity: both rows peak on the diagonal
    si, st_ = np.zeros((2, 2)), np.eye(2)  # student cosines = 0
    p = _softmax(np.array([1.0, 0.0]))
    kl_pq = float(np.sum(p * np.log(p / 0.5)))
    kl_qp = float(np.sum(0.5 * np.log(0.5 / p)))
    assert not math.isclose(kl_pq, kl_qp)
    got = modx_loss(_t(si), _t(st_), _t(ti), _t(tt), reduction="sum").item()
    assert got == pytest.approx(2 * kl_pq)  # 2 rows per direction, directions averaged


def test_temperature_and_reduction():
    rng = np.random.default_rng(3)
    ti = random_unit(rng, 6, 4)
    si, st_ = random_unit(rng, 6, 4), random_unit(rng, 6, 4)
    s = modx_loss(_t(si), _t(st_), _t(ti), _t(ti), 1.0, "sum").item()
    m = modx_loss(_t(si), _t(st_), _t(ti), _t(ti), 1.0, "mean").item()
    assert s == pytest.approx(6 * m)  # all 6 rows kept in both directions
    cold = modx_loss(_t(si), _t(st_), _t(ti), _t(ti), 0.1, "sum").item()
    assert cold == pytest.approx(ref_modx(si, st_, ti, ti, T=0.1))
    assert cold != pytest.approx(s)


def test_zero_when_student_equals_teacher_and_gradient_only_into_student():
    rng = np.random.default_rng(1)
    ti, tt = random_unit(rng, 7, 5), random_unit(rng, 7, 5)
    assert modx_loss(_t(ti), _t(tt), _t(ti), _t(tt)).item() == pytest.approx(0.0, abs=1e-12)
    si = _t(random_unit(rng, 7, 5)).requires_grad_(True)
    st_ = _t(random_unit(rng, 7, 5)).requires_grad_(True)
    t_img, t_txt = _t(ti).requires_grad_(True), _t(ti).requires_grad_(True)
    loss = modx_loss(si, st_, t_img, t_txt)
    loss.backward()
    assert t_img.grad is None and t_txt.grad is None
    assert si.grad is not None and si.grad.abs().sum() > 0 and st_.grad.abs().sum() > 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 8), scale=st.floats(1.0, 100.0))
def test_clip_loss_matches_reference(seed, n, scale):
    rng = np.random.default_rng(seed)
    img, txt = random_unit(rng, n, 5), random_unit(rng, n, 5)
    logits = scale * img @ txt.T

    def ce(rows):
        return float(np.mean([-(r[i] - np.log(np.sum(np.exp(r)))) for i, r in enumerate(rows)]))

    want = 0.5 * (ce(logits) + ce(logits.T))
    assert clip_loss(_t(img), _t(txt), torch.tensor(scale, dtype=torch.float64)).item() == pytest.approx(want, rel=1e-9)


def test_feature_distill_known_answers():
    a = _t([[1.0, 0.0], [0.0, 1.0]])
    b = _t([[0.0, 1.0], [0.0, 1.0]])  # row 0 at 90 degrees, row 1 identical
    assert feature_distill_loss(a, a, b, b, "cosine").item() == pytest.approx(0.5)
    assert feature_distill_loss(a, a, b, b, "l2").item() == pytest.approx(1.0)  # |(1,-1)|^2 = 2, mean over 2 rows
    assert feature_distill_loss(a, a, a, a, "cosine").item() == 0.0


def test_total_loss_weights_pieces_and_skips_teacher_pieces_without_teacher():
    rng = np.random.default_rng(2)
    img, txt = _t(random_unit(rng, 4, 3)), _t(random_unit(rng, 4, 3))
    ti, tt = _t(random_unit(rng, 4, 3)), _t(random_unit(rng, 4, 3))
    scale = torch.tensor(10.0, dtype=torch.float64)
    pieces = [ClipPiece(), ModXPiece(alpha=20.0)]
    alone, logs = total_loss(pieces, Batch(img, txt, scale))
    assert set(logs) == {"clip"} and alone.item() == pytest.approx(clip_loss(img, txt, scale).item())
    both, logs = total_loss(pieces, Batch(img, txt, scale, ti, tt))
    assert both.item() == pytest.approx(clip_loss(img, txt, scale).item() + 20.0 * modx_loss(img, txt, ti, tt).item())
