"""Grouping of a batch by coefficients: layout, round trips, edge cases."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dawin_fast.algorithm.grouping import (
    Grouping,
    group_by_labels,
    group_by_rows,
    single_group,
    two_model_rows,
)
from dawin_fast.algorithm.mixture import BetaMixture
from tests.conftest import DEVICES


def check_layout(g: Grouping, labels: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Every invariant of a Grouping, checked against plain Python."""
    b = labels.shape[0]
    labels_list = labels.tolist()
    assert g.num_samples == b and g.order.dtype == g.inverse.dtype == torch.int64
    assert g.offsets.dtype == g.labels.dtype == torch.int64 and g.coeffs.dtype == torch.float32
    assert g.offsets.shape == (g.num_groups + 1,)
    assert g.labels.tolist() == labels_list
    offsets = g.offsets.tolist()
    counts = [labels_list.count(k) for k in range(g.num_groups)]
    assert offsets == [0] + np.cumsum(counts, dtype=np.int64).tolist()
    order = g.order.tolist()
    assert sorted(order) == list(range(b))
    for k in range(g.num_groups):  # group k's samples, in caller order (stable)
        assert order[offsets[k] : offsets[k + 1]] == [i for i in range(b) if labels_list[i] == k]
    x = torch.arange(b * 3, dtype=torch.float32, device=g.order.device).reshape(b, 3)
    assert torch.equal(g.permute(x), x[g.order])
    assert torch.equal(g.unpermute(g.permute(x)), x)
    assert torch.equal(g.permute(g.unpermute(x)), x)
    if rows is not None:
        assert torch.equal(g.coeffs[g.labels], rows.float())


def test_group_by_rows_hand_example(device):
    rows = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 2.0], [0.0, 1.0], [3.0, 3.0]], device=device)
    g = group_by_rows(rows)
    # groups in torch.unique (lexicographic) order: [0,1], [1,2], [3,3]
    assert g.coeffs.tolist() == [[0.0, 1.0], [1.0, 2.0], [3.0, 3.0]]
    assert g.labels.tolist() == [1, 0, 1, 0, 2]
    assert g.order.tolist() == [1, 3, 0, 2, 4]
    assert g.inverse.tolist() == [2, 0, 3, 1, 4]
    assert g.offsets.tolist() == [0, 2, 4, 5]
    assert g.token_offsets(50).tolist() == [0, 100, 200, 250]
    assert g.coeffs.device == g.order.device == rows.device
    check_layout(g, g.labels, rows)


def test_group_by_labels_keeps_empty_groups(device):
    coeffs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.0, 1.0]], device=device)
    labels = torch.tensor([2, 0, 2, 0, 0], device=device)
    g = group_by_labels(labels, coeffs.double())
    assert g.num_groups == 4
    assert g.offsets.tolist() == [0, 3, 3, 5, 5]
    assert g.order.tolist() == [1, 3, 4, 0, 2]
    assert torch.equal(g.coeffs, coeffs)
    check_layout(g, labels, coeffs[labels])


@pytest.mark.parametrize("device", DEVICES)
@given(
    data=st.data(),
    b=st.integers(0, 40),
    num_groups=st.integers(1, 7),
    dist=st.sampled_from(["uniform", "identical", "distinct", "skewed"]),
)
def test_group_by_labels_properties(device, data, b, num_groups, dist):
    if dist == "identical":
        labels = [data.draw(st.integers(0, num_groups - 1))] * b
    elif dist == "distinct":
        labels = data.draw(st.permutations(list(range(num_groups))))[: min(b, num_groups)]
    elif dist == "skewed":
        labels = [0 if data.draw(st.booleans()) else num_groups - 1 for _ in range(b)]
    else:
        labels = data.draw(st.lists(st.integers(0, num_groups - 1), min_size=b, max_size=b))
    labels = torch.tensor(labels, dtype=torch.int64, device=device)
    coeffs = torch.randn(num_groups, 3, device=device)
    g = group_by_labels(labels, coeffs)
    check_layout(g, labels, coeffs[labels])


@given(
    data=st.data(),
    b=st.integers(0, 30),
    m=st.integers(1, 4),
    n_distinct=st.integers(1, 5),
)
def test_group_by_rows_properties(data, b, m, n_distinct):
    table = torch.tensor(
        data.draw(
            st.lists(
                st.lists(st.floats(-3, 3, width=32), min_size=m, max_size=m),
                min_size=n_distinct,
                max_size=n_distinct,
            )
        )
    )
    pick = torch.tensor(
        data.draw(st.lists(st.integers(0, n_distinct - 1), min_size=b, max_size=b)),
        dtype=torch.int64,
    )
    rows = table[pick].reshape(b, m)
    g = group_by_rows(rows)
    check_layout(g, g.labels, rows)
    assert g.num_groups == len({tuple(r) for r in rows.tolist()})
    # distinct groups have distinct rows
    assert len({tuple(r) for r in g.coeffs.tolist()}) == g.num_groups


def test_group_by_rows_compares_in_float32():
    rows = torch.tensor([[0.5, 0.1], [0.5, 0.1 + 1e-12]], dtype=torch.float64)
    g = group_by_rows(rows)
    assert g.num_groups == 1 and g.offsets.tolist() == [0, 2]


def test_per_sample_two_models():
    lam = torch.tensor([0.3, 0.7, 0.3, 0.1])
    rows = two_model_rows(lam)
    assert torch.allclose(rows, torch.tensor([[0.7, 0.3], [0.3, 0.7], [0.7, 0.3], [0.9, 0.1]]))
    g = group_by_rows(rows)
    assert g.num_groups == 3
    check_layout(g, g.labels, rows)


def test_two_model_rows():
    lam = torch.tensor([0.0, 0.25, 1.0, 1.5, -0.5], dtype=torch.float64)
    rows = two_model_rows(lam)
    assert rows.dtype == torch.float32 and rows.shape == (5, 2)
    assert rows.tolist() == [[1.0, 0.0], [0.75, 0.25], [0.0, 1.0], [-0.5, 1.5], [1.5, -0.5]]
    assert two_model_rows(np.array([0.5])).tolist() == [[0.5, 0.5]]
    with pytest.raises(ValueError, match="1-D"):
        two_model_rows(torch.ones(2, 2))
    with pytest.raises(ValueError, match="1-D"):
        two_model_rows(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        two_model_rows(torch.tensor([0.5, float("nan")]))


def test_single_group(device):
    row = torch.tensor([0.4, 0.6], device=device)
    g = single_group(row, 5)
    assert g.num_groups == 1 and g.num_samples == 5
    assert g.order.tolist() == g.inverse.tolist() == list(range(5))
    assert g.offsets.tolist() == [0, 5] and torch.equal(g.coeffs, row.unsqueeze(0))
    assert g.token_offsets(3).tolist() == [0, 15]
    check_layout(g, torch.zeros(5, dtype=torch.int64), row.expand(5, 2))
    empty = single_group(row, 0)
    assert empty.offsets.tolist() == [0, 0] and empty.num_samples == 0
    with pytest.raises(ValueError, match="batch_size"):
        single_group(row, -1)
    with pytest.raises(ValueError, match=r"\[M\]"):
        single_group(row.reshape(1, 2), 3)
    with pytest.raises(ValueError, match="NaN"):
        single_group(torch.tensor([float("inf"), 0.0]), 3)


def test_empty_batches(device):
    g = group_by_rows(torch.zeros(0, 3, device=device))
    assert g.num_samples == 0 and g.num_groups == 0 and g.offsets.tolist() == [0]
    assert g.coeffs.shape == (0, 3)
    g = group_by_labels(
        torch.zeros(0, dtype=torch.int64, device=device), torch.ones(4, 2, device=device)
    )
    assert g.offsets.tolist() == [0, 0, 0, 0, 0] and g.num_groups == 4
    x = torch.zeros(0, 7, device=device)
    assert g.unpermute(g.permute(x)).shape == (0, 7)
    assert g.token_offsets(50).tolist() == [0] * 5


def test_permute_many_dims_and_errors():
    g = group_by_labels(torch.tensor([1, 0, 1]), torch.eye(2))
    x = torch.randn(3, 4, 5)
    assert torch.equal(g.permute(x), x[[1, 0, 2]])
    assert torch.equal(g.unpermute(g.permute(x)), x)
    with pytest.raises(ValueError, match="expected 3 samples"):
        g.permute(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="expected 3 samples"):
        g.unpermute(torch.tensor(1.0))
    with pytest.raises(ValueError, match="tokens_per_sample"):
        g.token_offsets(-1)
    with pytest.raises(ValueError, match="tokens_per_sample"):
        g.token_offsets(2.5)
    with pytest.raises(AttributeError):
        g.order = torch.zeros(3)  # frozen


def test_group_by_labels_errors():
    coeffs = torch.eye(3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        group_by_labels(torch.tensor([0, 3]), coeffs)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        group_by_labels(torch.tensor([-1, 0]), coeffs)
    with pytest.raises(ValueError, match="integer"):
        group_by_labels(torch.tensor([0.0, 1.0]), coeffs)
    with pytest.raises(ValueError, match=r"\[B\]"):
        group_by_labels(torch.zeros(2, 2, dtype=torch.int64), coeffs)
    with pytest.raises(ValueError, match=r"\[\*, M\]"):
        group_by_labels(torch.tensor([0]), torch.ones(3))
    with pytest.raises(ValueError, match="at least one row"):
        group_by_labels(torch.zeros(0, dtype=torch.int64), torch.ones(0, 2))
    with pytest.raises(ValueError, match="NaN"):
        group_by_labels(torch.tensor([0]), torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="floating"):
        group_by_labels(torch.tensor([0]), torch.ones(1, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        group_by_rows(torch.tensor([[0.5, float("inf")]]))
    with pytest.raises(ValueError, match=r"\[\*, M\]"):
        group_by_rows(torch.ones(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_group_by_labels_device_mismatch():
    with pytest.raises(ValueError, match="labels on"):
        group_by_labels(torch.tensor([0], device="cuda"), torch.ones(1, 2))


def test_from_a_beta_mixture(device):
    # mixture mode end to end: numpy labels and means go straight in
    rng = np.random.default_rng(0)
    lam = np.r_[rng.beta(6, 34, 40), rng.beta(20, 20, 30), rng.beta(34, 6, 50)]
    model = BetaMixture().fit(lam)
    labels = model.predict(lam)
    rows = two_model_rows(torch.as_tensor(model.means_, device=device))
    g = group_by_labels(labels, rows)
    assert np.abs(g.offsets.cpu().numpy() - [0, 40, 70, 120]).max() <= 2
    assert g.order.device == rows.device
    np.testing.assert_allclose(g.coeffs.sum(dim=1).cpu().numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(g.coeffs[:, 1].cpu().numpy(), model.means_, rtol=1e-6)
    check_layout(g, torch.as_tensor(labels, device=device), rows[labels])
