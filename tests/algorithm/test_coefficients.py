"""DaWin coefficients (two models, offset adjustment, multi-task) and output-space variants."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dawin_fast.algorithm.coefficients import (
    TEMPERATURES,
    coefficients_from_entropies,
    coefficients_multi,
    coefficients_two,
    dynamic_classifier_selection,
    dynamic_output_ensemble,
    offset_terms,
)
from dawin_fast.algorithm.expertise import entropy, max_logit


def np_softmax(z, t=1.0):
    z = np.asarray(z, dtype=np.float64) / t
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_entropy(z, t=1.0):
    p = np_softmax(z, t)
    return -(p * np.log(p)).sum(axis=-1)


def random_logits(seed, b=9, c=6, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=gen, dtype=torch.float64) * scale


def test_two_hand_value():
    # model 0 uniform over 2 classes (H0 = log 2), model 1 certain (H1 = 0):
    # λ = e^0 / (e^{-log 2} + e^0) = 2/3
    z0 = torch.zeros(1, 2)
    z1 = torch.tensor([[100.0, 0.0]])
    assert coefficients_two(z0, z1).item() == pytest.approx(2 / 3, rel=1e-6)
    assert coefficients_two(z1, z0).item() == pytest.approx(1 / 3, rel=1e-6)
    assert coefficients_two(z0, z0).item() == 0.5


@pytest.mark.parametrize("temps", [(1.0, 1.0), (0.5, 2.0), "ViT-B-16"])
def test_two_matches_numpy(temps, device):
    z0, z1 = random_logits(0), random_logits(1, c=4)  # class counts may differ
    t0, t1 = TEMPERATURES[temps] if isinstance(temps, str) else temps
    h0, h1 = np_entropy(z0.numpy(), t0), np_entropy(z1.numpy(), t1)
    expected = np.exp(-h1) / (np.exp(-h0) + np.exp(-h1))
    lam = coefficients_two(z0.to(device), z1.to(device), temps)
    assert lam.dtype == torch.float32 and lam.shape == (9,) and lam.device.type == device
    np.testing.assert_allclose(lam.cpu().numpy(), expected, rtol=1e-6)


def test_temperatures_table():
    assert TEMPERATURES == {
        "ViT-B-32": (0.9576, 0.9733),
        "ViT-B-16": (0.96, 1.0066),
        "ViT-L-14": (1.0767, 0.9545),
    }
    z0, z1 = random_logits(2), random_logits(3)
    by_name = coefficients_two(z0, z1, "ViT-L-14")
    assert torch.equal(by_name, coefficients_two(z0, z1, (1.0767, 0.9545)))
    assert not torch.allclose(by_name, coefficients_two(z0, z1))
    with pytest.raises(ValueError, match="unknown model"):
        coefficients_two(z0, z1, "ViT-H-14")


def test_offset_adjustment_hand_values():
    # H0 = [1, 3]: mean 2, unbiased std sqrt(2); H1 = [2, 2]: mean 2, std 0.
    h0 = torch.tensor([1.0, 3.0])
    h1 = torch.tensor([2.0, 2.0])
    b = (math.sqrt(2) / 2 + 0.0) / 2
    w = (2.0 + 2.0) / 2.0
    assert offset_terms(h0, h1) == pytest.approx((b, w), rel=1e-12)
    expected = [
        (math.exp(-2) + b / w) / (math.exp(-1) + math.exp(-2) + b),
        (math.exp(-2) + b / w) / (math.exp(-3) + math.exp(-2) + b),
    ]
    lam = coefficients_from_entropies(h0, h1, offset_adjustment=True)
    np.testing.assert_allclose(lam.numpy(), expected, rtol=1e-6)


def test_offset_adjustment_matches_numpy():
    z0, z1 = random_logits(4, b=50), random_logits(5, b=50, scale=1.0)
    h0, h1 = np_entropy(z0.numpy(), 0.9576), np_entropy(z1.numpy(), 0.9733)
    b = (h0.std(ddof=1) / h0.mean() + h1.std(ddof=1) / h1.mean()) / 2
    w = (h0.mean() + h1.mean()) / h0.mean()
    expected = (np.exp(-h1) + b / w) / (np.exp(-h0) + np.exp(-h1) + b)
    lam = coefficients_two(z0, z1, "ViT-B-32", offset_adjustment=True)
    np.testing.assert_allclose(lam.numpy(), expected, rtol=1e-6)
    # terms from an evaluation set, applied to a batch of it
    terms = offset_terms(entropy(z0, 0.9576), entropy(z1, 0.9733))
    assert terms == pytest.approx((b, w), rel=1e-10)
    part = coefficients_two(z0[:7], z1[:7], "ViT-B-32", offset_adjustment=terms)
    np.testing.assert_allclose(part.numpy(), expected[:7], rtol=1e-6)
    # and it differs from the plain coefficients
    assert not np.allclose(coefficients_two(z0, z1, "ViT-B-32").numpy(), expected, atol=1e-3)


def test_offset_terms_edge_cases():
    with pytest.raises(ValueError, match="at least 2 samples"):
        offset_terms(torch.tensor([1.0]), torch.tensor([2.0]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        coefficients_two(torch.zeros(1, 3), torch.zeros(1, 3), offset_adjustment=True)
    with pytest.raises(ValueError, match="non-negative"):
        offset_terms(torch.tensor([-1.0, 2.0]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        offset_terms(torch.tensor([float("nan"), 2.0]), torch.tensor([1.0, 2.0]))
    # all-zero entropies: coefficient of variation 0 and b/w = 0 by convention
    b, w = offset_terms(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]))
    assert b == pytest.approx(0.5 / 2) and w == math.inf
    lam = coefficients_from_entropies(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]), True)
    h1 = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(lam.numpy(), np.exp(-h1) / (1 + np.exp(-h1) + b), rtol=1e-6)
    lam = coefficients_from_entropies(torch.zeros(4), torch.zeros(4), True)
    assert torch.equal(lam, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="pair"):
        coefficients_from_entropies(torch.ones(2), torch.ones(2), offset_adjustment="yes")
    with pytest.raises(ValueError, match="w > 0"):
        coefficients_from_entropies(torch.ones(2), torch.ones(2), offset_adjustment=(0.1, 0.0))


def test_from_entropies_is_stable_for_any_scores():
    # negated confidences can be large and negative: no overflow, no NaN
    h0 = torch.tensor([-1e4, 0.0, 1e4, -800.0])
    h1 = torch.tensor([0.0, -1e4, 1e4, -801.0])
    lam = coefficients_from_entropies(h0, h1)
    np.testing.assert_allclose(lam.numpy(), [0.0, 1.0, 0.5, 1 / (1 + math.exp(-1))], atol=1e-7)
    lam = coefficients_from_entropies(h0, h1, offset_adjustment=(0.2, 1.5))
    assert torch.isfinite(lam).all() and ((lam >= 0) & (lam <= 1)).all()
    # max-logit expertise: a sigmoid of the difference of max logits
    z0, z1 = random_logits(6), random_logits(7)
    lam = coefficients_from_entropies(-max_logit(z0), -max_logit(z1))
    expected = 1 / (1 + np.exp(-(z1.numpy().max(1) - z0.numpy().max(1))))
    np.testing.assert_allclose(lam.numpy(), expected, rtol=1e-6)


@given(st.lists(st.tuples(st.floats(0, 20), st.floats(0, 20)), min_size=2, max_size=30))
def test_coefficient_properties(pairs):
    h0 = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    h1 = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    for adjust in (False, True):
        lam = coefficients_from_entropies(h0, h1, adjust)
        assert ((lam >= 0) & (lam <= 1)).all()
        if not adjust:  # swapping the models gives 1 - λ
            swapped = coefficients_from_entropies(h1, h0, adjust)
            assert torch.allclose(lam + swapped, torch.ones_like(lam), atol=1e-6)
            # the more certain model gets the larger weight
            assert ((lam > 0.5) == (h1 < h0))[(h0 - h1).abs() > 1e-6].all()


def test_two_bad_inputs():
    with pytest.raises(ValueError, match="batch size"):
        coefficients_two(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        coefficients_two(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        coefficients_two(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="temperature"):
        coefficients_two(torch.zeros(1, 2), torch.zeros(1, 2), (1.0, 0.0))
    with pytest.raises(ValueError, match="pair"):
        coefficients_two(torch.zeros(1, 2), torch.zeros(1, 2), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("scale", [None, 1.0, -0.5])
def test_multi_matches_numpy(scale, device):
    zs = [random_logits(10 + t, c=3 + t) for t in range(4)]
    temps = [1.0, 0.5, 2.0, 1.3]
    h = np.stack([np_entropy(z.numpy(), t) for z, t in zip(zs, temps, strict=True)], axis=1)
    p_expected = np.exp(-h) / np.exp(-h).sum(axis=1, keepdims=True)
    s = 0.3 * 4 if scale is None else scale
    p, rows = coefficients_multi([z.to(device) for z in zs], temps, scale)
    assert p.shape == (9, 4) and rows.shape == (9, 5)
    assert p.dtype == rows.dtype == torch.float32
    np.testing.assert_allclose(p.cpu().numpy(), p_expected, rtol=1e-6)
    np.testing.assert_allclose(rows[:, 0].cpu().numpy(), 1.0)
    np.testing.assert_allclose(rows[:, 1:].cpu().numpy(), s * p_expected, rtol=1e-6)


def test_multi_with_two_models_is_dawin():
    z0, z1 = random_logits(20), random_logits(21)
    p, rows = coefficients_multi([z0, z1], (0.9, 1.1))
    lam = coefficients_two(z0, z1, (0.9, 1.1))
    assert torch.allclose(p[:, 1], lam, atol=1e-7)
    assert torch.allclose(rows[:, 2], 0.6 * lam, atol=1e-7)
    p, _ = coefficients_multi([z0])
    assert torch.equal(p, torch.ones(9, 1))


def test_multi_bad_inputs():
    with pytest.raises(ValueError, match="non-empty"):
        coefficients_multi([])
    with pytest.raises(ValueError, match="non-empty"):
        coefficients_multi(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same B"):
        coefficients_multi([torch.zeros(2, 3), torch.zeros(3, 3)])
    with pytest.raises(ValueError, match="2 temperatures for 3 models"):
        coefficients_multi([torch.zeros(2, 3)] * 3, [1.0, 1.0])
    with pytest.raises(ValueError, match="scale"):
        coefficients_multi([torch.zeros(2, 3)], scale=float("inf"))


def test_dynamic_output_ensemble(device):
    z0, z1 = random_logits(30).to(device), random_logits(31).to(device)
    lam = torch.linspace(0, 1, 9, dtype=torch.float64, device=device)
    p = dynamic_output_ensemble(z0, z1, lam, (0.5, 2.0)).cpu().numpy()
    lam_np = lam.cpu().numpy()[:, None]
    expected = (1 - lam_np) * np_softmax(z0.cpu(), 0.5) + lam_np * np_softmax(z1.cpu(), 2.0)
    np.testing.assert_allclose(p, expected, rtol=1e-10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    p_half = dynamic_output_ensemble(z0.float(), z1.float(), 0.25)
    assert p_half.dtype == torch.float32
    expected = 0.75 * np_softmax(z0.cpu()) + 0.25 * np_softmax(z1.cpu())
    np.testing.assert_allclose(p_half.cpu().numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="lam"):
        dynamic_output_ensemble(z0, z1, torch.ones(3, device=device))
    with pytest.raises(ValueError, match="same shape"):
        dynamic_output_ensemble(z0, z1[:, :3], 0.5)


def test_dynamic_classifier_selection(device):
    z0 = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    z1 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 9.0, 0.0], [2.0, 2.0, 2.0], [0.0, 1.0, 0.0]])
    model, logits = dynamic_classifier_selection(z0.to(device), z1.to(device))
    # rows 2 and 3 tie (equal entropies): model 0
    assert model.tolist() == [0, 1, 0, 0] and model.dtype == torch.int64
    assert torch.equal(logits.cpu(), torch.stack([z0[0], z1[1], z0[2], z0[3]]))
    assert logits.argmax(-1).tolist() == [0, 1, 0, 1]
    # temperatures change the entropies that decide
    a = torch.tensor([[2.0, 0.0]])
    b = torch.tensor([[1.0, 0.0]])
    assert dynamic_classifier_selection(a, b)[0].item() == 0
    assert dynamic_classifier_selection(a, b, (4.0, 1.0))[0].item() == 1
