"""Expertise measures: entropy, cross-entropy, max logit, max softmax."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dawin_fast.algorithm.expertise import cross_entropy, entropy, max_logit, max_softmax


def np_log_softmax(z, t=1.0):
    z = np.asarray(z, dtype=np.float64) / t
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_entropy(z, t=1.0):
    logp = np_log_softmax(z, t)
    return -(np.exp(logp) * logp).sum(axis=-1)


def test_entropy_hand_values():
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    z4 = torch.zeros(1, 4)
    assert torch.allclose(entropy(z), torch.full((3,), math.log(2)), atol=1e-7)
    assert entropy(z4).item() == pytest.approx(math.log(4), abs=1e-6)
    # p = (1/(1+e), e/(1+e)): H = log(1+e) - e/(1+e)
    e = math.e
    expected = math.log(1 + e) - e / (1 + e)
    assert entropy(torch.tensor([0.0, 1.0])).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_entropy_matches_numpy(t, device):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(7, 11, generator=gen, dtype=torch.float64) * 3
    h = entropy(z.to(device), t).cpu()
    assert h.dtype == torch.float64
    np.testing.assert_allclose(h.numpy(), np_entropy(z.numpy(), t), rtol=1e-12, atol=1e-12)
    h32 = entropy(z.float().to(device), t).cpu()
    assert h32.dtype == torch.float32
    np.testing.assert_allclose(h32.numpy(), np_entropy(z.numpy(), t), rtol=1e-5, atol=1e-6)


def test_entropy_shapes_and_dtypes():
    z = torch.randn(2, 3, 5)
    assert entropy(z).shape == (2, 3)
    assert entropy(z[0, 0]).shape == ()
    assert entropy(torch.zeros(0, 5)).shape == (0,)
    assert entropy(z.half()).dtype == torch.float32
    assert entropy(z.bfloat16()).dtype == torch.float32
    assert entropy(z.double()).dtype == torch.float64
    # numpy arrays are accepted too
    assert entropy(np.zeros((1, 2))).item() == pytest.approx(math.log(2), abs=1e-6)


def test_entropy_extreme_logits_are_finite():
    big = torch.tensor([[3e38, -3e38], [1e4, 0.0], [-1e30, -1e30]], dtype=torch.float32)
    for t in (1e-3, 1.0, 1e3):
        h = entropy(big, t)
        assert torch.isfinite(h).all(), (t, h)
        assert h[0].item() == pytest.approx(0.0, abs=1e-6)
        assert h[2].item() == pytest.approx(math.log(2), abs=1e-6)
    # temperature limits: T -> 0 gives 0 (one class), T -> inf gives log C
    z = torch.tensor([1.0, 2.0, 3.0])
    assert entropy(z, 1e-4).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy(z, 1e6).item() == pytest.approx(math.log(3), abs=1e-5)


@given(
    st.lists(st.floats(-50, 50), min_size=1, max_size=12),
    st.floats(-1e3, 1e3),
    st.floats(0.05, 20),
)
def test_entropy_properties(values, shift, t):
    z = torch.tensor(values, dtype=torch.float64)
    h = entropy(z, t).item()
    assert -1e-12 <= h <= math.log(len(values)) + 1e-9
    # softmax is shift invariant, entropy is permutation invariant
    assert entropy(z + shift, t).item() == pytest.approx(h, abs=1e-9)
    assert entropy(z.flip(0), t).item() == pytest.approx(h, abs=1e-9)


@pytest.mark.parametrize("fn", [entropy, max_logit, max_softmax])
def test_bad_logits(fn):
    with pytest.raises(ValueError, match="floating point"):
        fn(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="at least one class"):
        fn(torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least one class"):
        fn(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="NaN or infinity"):
        fn(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN or infinity"):
        fn(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(TypeError):
        fn([[1.0, 2.0]])


@pytest.mark.parametrize("fn", [entropy, max_softmax])
@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf"), "warm"])
def test_bad_temperature(fn, t):
    with pytest.raises(ValueError, match="temperature"):
        fn(torch.zeros(2, 3), t)


def test_cross_entropy_hand_values(device):
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], device=device)
    labels = torch.tensor([0, 2], device=device)
    ce = cross_entropy(z, labels).cpu()
    expected = [-(1 - math.log(math.exp(1) + math.exp(2) + math.exp(3))), math.log(3)]
    np.testing.assert_allclose(ce.numpy(), expected, rtol=1e-6)
    ce_t = cross_entropy(z.double(), labels, temperature=2.0).cpu()
    np.testing.assert_allclose(ce_t.numpy(), -np_log_softmax(z.cpu().numpy(), 2.0)[[0, 1], [0, 2]])
    # pseudo-labels: the argmax of the model itself gives -log max_softmax
    z = torch.randn(6, 4, dtype=torch.float64, device=device)
    ce_self = cross_entropy(z, z.argmax(-1))
    assert torch.allclose(ce_self, -max_softmax(z).log())


def test_cross_entropy_bad_labels():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        cross_entropy(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        cross_entropy(z, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer"):
        cross_entropy(z, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        cross_entropy(z, torch.tensor([0, 1, 2]))


def test_max_logit_and_max_softmax():
    z = torch.tensor([[1.0, 4.0, 2.0], [-3.0, -3.0, -5.0]])
    assert torch.equal(max_logit(z), torch.tensor([4.0, -3.0]))
    expected = np.exp(np_log_softmax(z.numpy()).max(axis=-1))
    np.testing.assert_allclose(max_softmax(z).numpy(), expected, rtol=1e-6)
    expected_t = np.exp(np_log_softmax(z.numpy(), 0.5).max(axis=-1))
    np.testing.assert_allclose(max_softmax(z, 0.5).numpy(), expected_t, rtol=1e-6)
    assert max_softmax(torch.zeros(1, 5)).item() == pytest.approx(0.2)
    assert max_logit(z.double()).dtype == torch.float64
    assert max_logit(z.half()).dtype == torch.float32
