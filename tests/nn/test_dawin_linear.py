"""DaWinLinear: the drop-in nn.Linear over M stacked models, and the routing mechanism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dawin_fast import DaWinLinear, route
from dawin_fast.nn import current_routing
from tests.devices import BACKENDS, run_backend


def linears(num_models, in_features=20, out_features=12, bias=True, seed=0):
    torch.manual_seed(seed)
    return [nn.Linear(in_features, out_features, bias=bias) for _ in range(num_models)]


def interpolated_linear(lins, row):
    weight = sum(c * lin.weight for c, lin in zip(row, lins, strict=True))
    if lins[0].bias is None:
        return weight.detach(), None
    bias = sum(c * lin.bias for c, lin in zip(row, lins, strict=True))
    return weight.detach(), bias.detach()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("num_models", [1, 2, 5])
def test_one_group_equals_linear_on_interpolated_weight(backend, bias, num_models):
    lins = linears(num_models, bias=bias)
    layer = DaWinLinear.from_linears(lins)
    row = torch.randn(num_models) * 1.5
    x = torch.randn(3, 7, 20)
    weight, b = interpolated_linear(lins, row)
    got = run_backend(backend, lambda layer, x, row: layer(x, row), layer, x, row)
    torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.merged(row)(x), F.linear(x, weight, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_copies_of_one_linear_give_that_linear(backend):
    lin = linears(1)[0]
    layer = DaWinLinear.from_linears([lin] * 4)
    coeffs = torch.randn(3, 4)
    coeffs[:, -1] = 1 - coeffs[:, :-1].sum(1)  # rows sum to 1; entries negative and > 1
    offsets = torch.tensor([0, 5, 5, 11])
    x = torch.randn(11, 20)
    got = run_backend(backend, lambda *a: a[0](*a[1:]), layer, x, coeffs, offsets)
    torch.testing.assert_close(got, lin(x).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_use_their_own_rows(backend):
    lins = linears(3)
    layer = DaWinLinear.from_linears(lins)
    coeffs = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [-0.5, 2.0, -0.5]])
    offsets = torch.tensor([0, 2, 6, 7], dtype=torch.int32)
    x = torch.randn(7, 20)
    got = run_backend(backend, lambda *a: a[0](*a[1:]), layer, x, coeffs, offsets)
    for g in range(3):
        rows = slice(int(offsets[g]), int(offsets[g + 1]))
        weight, b = interpolated_linear(lins, coeffs[g])
        torch.testing.assert_close(got[rows], F.linear(x[rows], weight, b), rtol=1e-5, atol=1e-5)


def test_routing_scales_sample_offsets_to_rows():
    lins = linears(2)
    layer = DaWinLinear.from_linears(lins)
    coeffs = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    sample_offsets = torch.tensor([0, 1, 3])
    x = torch.randn(3, 4, 20)  # 3 samples, 4 tokens each, batch-first
    with route(coeffs, sample_offsets) as routing:
        assert current_routing() is routing
        got = layer(x)
        flat = layer(x.reshape(12, 20))  # same rows, flattened
    assert current_routing() is None
    expected = layer(x, coeffs, sample_offsets * 4)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(flat.reshape(3, 4, 12), expected)
    w0, b0 = interpolated_linear(lins, coeffs[0])
    torch.testing.assert_close(got[0], F.linear(x[0], w0, b0), rtol=1e-5, atol=1e-5)


def test_routing_single_row_and_nesting():
    lins = linears(2)
    layer = DaWinLinear.from_linears(lins)
    x = torch.randn(5, 20)
    with route(torch.tensor([0.3, 0.7])):
        outer = layer(x)
        with route(torch.tensor([[1.0, 0.0]])):
            inner = layer(x)
        again = layer(x)
    torch.testing.assert_close(outer, layer(x, torch.tensor([0.3, 0.7])))
    torch.testing.assert_close(inner, lins[0](x).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, outer)


def test_routing_errors():
    layer = DaWinLinear.from_linears(linears(2))
    with pytest.raises(RuntimeError, match="DaWinLinear .* needs coefficients"):
        layer(torch.randn(3, 20))
    with pytest.raises(ValueError, match="offsets are required"):
        route(torch.ones(2, 2)).__enter__()
    with pytest.raises(ValueError, match="NaN"):
        route(torch.tensor([float("nan"), 1.0])).__enter__()
    with pytest.raises(ValueError, match="non-decreasing"):
        route(torch.ones(2, 2), torch.tensor([0, 3, 2])).__enter__()
    with route(torch.ones(2, 2) / 2, torch.tensor([0, 1, 3])):
        with pytest.raises(ValueError, match="batch-first"):
            layer(torch.randn(4, 3, 20))  # sequence-first [L, B, K]
        with pytest.raises(ValueError, match="not a multiple"):
            layer(torch.randn(4, 20))
    with pytest.raises(ValueError, match="offsets given without coeffs"):
        layer(torch.randn(3, 20), offsets=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="offsets are required"):
        layer(torch.randn(3, 20), torch.ones(2, 2))


def test_from_linears_rejects_mismatches():
    with pytest.raises(ValueError, match="at least one"):
        DaWinLinear.from_linears([])
    with pytest.raises(TypeError, match="item 1 is Conv1d"):
        DaWinLinear.from_linears([nn.Linear(3, 4), nn.Conv1d(3, 4, 1)])
    with pytest.raises(ValueError, match="linear 1 differs .* weight shape"):
        DaWinLinear.from_linears([nn.Linear(3, 4), nn.Linear(3, 5)])
    with pytest.raises(ValueError, match="linear 2 differs .* dtype"):
        DaWinLinear.from_linears([nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(3, 4).half()])
    with pytest.raises(ValueError, match="bias presence"):
        DaWinLinear.from_linears([nn.Linear(3, 4), nn.Linear(3, 4, bias=False)])
    with pytest.raises(ValueError, match="num_models"):
        DaWinLinear(3, 4, num_models=0)


def test_module_protocol_to_state_dict_no_grad():
    lins = linears(3)
    layer = DaWinLinear.from_linears(lins)
    assert not layer.weight.requires_grad
    state = layer.state_dict()
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (3, 12, 20)
    fresh = DaWinLinear(20, 12, 3)
    fresh.load_state_dict(state)
    x = torch.randn(4, 20)
    row = torch.tensor([0.2, 0.5, 0.3])
    torch.testing.assert_close(fresh(x, row), layer(x, row))

    half = layer.to(torch.float16)
    assert half.weight.dtype == torch.float16 and half.bias.dtype == torch.float16
    with torch.no_grad():
        y16 = half(x.half(), row)
    assert y16.dtype == torch.float16
    weight, b = interpolated_linear(lins, row)
    torch.testing.assert_close(y16.float(), F.linear(x, weight, b), rtol=1e-2, atol=1e-2)
    assert "num_models=3" in repr(layer)


def test_gradient_flows_to_input_and_coeffs():
    layer = DaWinLinear.from_linears(linears(2))
    x = torch.randn(6, 20, requires_grad=True)
    coeffs = torch.tensor([[0.5, 0.5], [0.1, 0.9]], requires_grad=True)
    layer(x, coeffs, torch.tensor([0, 2, 6])).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert coeffs.grad is not None and coeffs.grad.shape == (2, 2)
