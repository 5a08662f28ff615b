"""``interp_linear`` under ``torch.compile(fullgraph=True)`` with default settings.

Reading offsets and coefficients on the host would be a data-dependent branch (a graph
break, an error with ``fullgraph=True``); while compiling, the value checks become asserts
inside the graph, with the eager messages.
"""

from __future__ import annotations

import pytest
import torch

from dawin_fast import interp_linear, use_backend


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    with use_backend("torch"):  # the compiled graph calls the op; the op's path is not
        yield                   # under test here
    torch._dynamo.reset()


def layer(x, weight, coeffs, offsets):
    return interp_linear(x, weight, coeffs, offsets)


def inputs(offsets=(0, 3, 6), coeffs=((0.2, 0.8), (0.6, 0.4))):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(6, 8, generator=gen), torch.randn(2, 4, 8, generator=gen),
            torch.tensor(coeffs), torch.tensor(offsets))


def test_compiles_fullgraph_with_default_settings():
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    args = inputs()
    torch.testing.assert_close(compiled(*args), layer(*args))


@pytest.mark.parametrize("offsets, coeffs, message", [
    ((1, 3, 6), ((0.2, 0.8), (0.6, 0.4)), "offsets must start at 0"),
    ((0, 4, 3), ((0.2, 0.8), (0.6, 0.4)), "offsets must be non-decreasing"),
    ((0, 3, 5), ((0.2, 0.8), (0.6, 0.4)), "offsets must end at the row count"),
    ((0, 3, 6), ((0.2, float("nan")), (0.6, 0.4)), "coeffs contain NaN or infinity"),
])
def test_compiled_value_checks_keep_the_messages(offsets, coeffs, message):
    args = inputs(offsets, coeffs)
    with pytest.raises(ValueError, match=message):  # eager: the same message
        layer(*args)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    compiled(*inputs())  # a valid call first: the same graph then sees the bad values
    with pytest.raises(RuntimeError, match=message):
        compiled(*args)
