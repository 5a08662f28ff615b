"""``use_strategy`` forces the Triton kernel of ``interp_linear``; ``kernel_choice`` says
what a call launches. Both are what the benchmarks' per-strategy methods rely on.

On a CPU the kernels run through the interpreter (fp32); on a GPU compiled (bf16 too).
"""

from __future__ import annotations

import pytest
import torch

import dawin_fast
from dawin_fast import kernel_choice, kernels, use_backend, use_strategy
from tests.devices import backend_device
from tests.reference import assert_close_to_reference, offsets_from_lengths


def inputs(device, dtype=torch.float32, lengths=(7, 0, 12, 5)):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sum(lengths), 40, generator=gen).to(device, dtype)
    weight = (torch.randn(2, 24, 40, generator=gen) / 6).to(device, dtype)
    bias = torch.randn(2, 24, generator=gen).to(device, dtype)
    coeffs = torch.rand(len(lengths), 2, generator=gen).to(device)
    return x, weight, coeffs, offsets_from_lengths(list(lengths), device=device), bias


@pytest.fixture
def device():
    if not torch.cuda.is_available() and not kernels.interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    return backend_device("triton")


@pytest.mark.parametrize("strategy", kernels.STRATEGIES)
def test_forced_strategy_is_launched_and_correct(strategy, device, monkeypatch):
    launched = []
    original = dawin_fast.ops.kernels.interp_matmul

    def spy(*args, **kwargs):
        launched.append(kwargs.get("strategy"))
        return original(*args, **kwargs)

    monkeypatch.setattr(dawin_fast.ops.kernels, "interp_matmul", spy)
    x, weight, coeffs, offsets, bias = inputs(device)
    with use_backend("triton"), use_strategy(strategy):
        y = dawin_fast.interp_linear(x, weight, coeffs, offsets, bias)
        choice = kernel_choice(x, weight, coeffs)
    assert launched == [strategy]
    assert choice.split(":")[0].split(" ")[0] == strategy, choice
    assert_close_to_reference(y, x, weight, coeffs, offsets, bias)
    # Outside the block the default rule is back.
    with use_backend("triton"):
        dawin_fast.interp_linear(x, weight, coeffs, offsets, bias)
    assert launched[-1] is None


def test_kernel_choice_names_the_default_and_the_torch_path(device):
    x, weight, coeffs, _, _ = inputs(device)
    with use_backend("triton"):
        default = kernel_choice(x, weight, coeffs)
    expected = kernels.choose_strategy(x.shape[0], coeffs.shape[0], 2, x.dtype, True, True,
                                       24, 40)
    if device == "cpu":  # the interpreter: the autotuned kernels' rule, not measured
        assert default == f"{expected} [model]"
    assert default.split(":")[0].split(" ")[0] in kernels.STRATEGIES
    with use_backend("torch"):
        assert kernel_choice(x, weight, coeffs) in ("torch:loop [model]",
                                                    "torch:rowscaled [model]")
    with use_backend("triton"), use_strategy("rowscaled"):
        assert kernel_choice(x, weight, coeffs) == "rowscaled [forced]"


def test_use_strategy_rejects_unknown_names_and_restores_on_error():
    with pytest.raises(ValueError, match="strategy must be one of"):
        with use_strategy("magic"):
            pass
    with pytest.raises(RuntimeError, match="inside"):
        with use_strategy("rowscaled"):
            raise RuntimeError("inside")
    assert dawin_fast.ops._strategy() is None
