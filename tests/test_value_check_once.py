"""The value check reads the same coeffs/offsets to the host once, not once per layer.

A model whose layers all get the same ``coeffs`` and ``offsets`` tensors (the user's own
``nn.Linear`` replaced by ``DaWinLinear``) would otherwise stall a GPU's pipeline at every
layer. Host reads are counted on the Triton path (the CUDA flow: no PyTorch-path loop
reads the offsets), with the kernel itself replaced by a stand-in that reads nothing.
"""

from __future__ import annotations

import gc

import pytest
import torch

from dawin_fast import ops
from dawin_fast.nn import DaWinLinear

K, N, M, ROWS = 16, 8, 3, 10


@pytest.fixture
def reads(monkeypatch):
    """The number of host reads (``Tensor.tolist``/``Tensor.item``) made so far."""
    count = [0]
    for name in ("tolist", "item"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            count[0] += 1
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)

    def no_kernel(x, weight, coeffs, offsets, bias=None, **kwargs):
        return torch.zeros((x.shape[0], weight.shape[1]), dtype=x.dtype)
    monkeypatch.setattr(ops, "_use_triton", lambda x: True)
    monkeypatch.setattr(ops.kernels, "interp_matmul", no_kernel)
    ops._validated.clear()
    return count


def model(layers: int = 12) -> list[DaWinLinear]:
    stack = [DaWinLinear(K, K, M) for _ in range(layers)]
    for layer in stack:
        layer.requires_grad_(False)
    return stack


def forward(stack, x, coeffs, offsets):
    for layer in stack:
        x = layer(x, coeffs, offsets)
    return x


def inputs():
    coeffs = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.5]])
    return torch.randn(ROWS, K), coeffs, torch.tensor([0, 4, ROWS])


def test_one_host_read_per_forward_of_twelve_layers(reads):
    stack, (x, coeffs, offsets) = model(), inputs()
    with torch.no_grad():
        forward(stack, x, coeffs, offsets)
        assert reads[0] <= 1
        before = reads[0]
        forward(stack, x, coeffs, offsets)
        assert reads[0] - before <= 1


@pytest.mark.parametrize("which, value, message", [
    ("coeffs", float("nan"), "coeffs contain NaN or infinity"),
    ("offsets", 11, "offsets must be non-decreasing"),
])
def test_an_in_place_change_is_checked_again(reads, which, value, message):
    stack, (x, coeffs, offsets) = model(2), inputs()
    with torch.no_grad():
        forward(stack, x, coeffs, offsets)
        tensor = coeffs if which == "coeffs" else offsets
        tensor.view(-1)[1] = value  # through a view: the version counter is shared
        with pytest.raises(ValueError, match=message):
            forward(stack, x, coeffs, offsets)


def test_a_new_tensor_at_a_freed_tensors_address_is_checked(reads):
    """A new tensor over the same memory, at a freed tensor's id (Python reuses them),
    with its own version counter at 0: the weak reference tells them apart."""
    stack, (x, coeffs, offsets) = model(1), inputs()
    memory = coeffs.numpy().copy()
    with torch.no_grad():
        for _ in range(5):
            memory[0, 0] = 0.2
            first = torch.from_numpy(memory)
            forward(stack, x, first, offsets)
            del first
            gc.collect()
            memory[0, 0] = float("inf")  # a write no version counter sees
            with pytest.raises(ValueError, match="NaN or infinity"):
                forward(stack, x, torch.from_numpy(memory), offsets)
