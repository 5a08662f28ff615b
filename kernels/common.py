"""Pieces every kernel module shares: the dot that honours IEEE fp32, the bias arguments."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b``; IEEE keeps fp32 exact (F.linear's default) instead of TF32."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


def bias_args(bias: torch.Tensor | None, weight: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(pointer, stride_bm, stride_bn) for an optional [M, N] bias. Without one, weight
    stands in for the pointer: never read when HAS_BIAS is False."""
    if bias is None:
        return weight, 0, 0
    return bias, bias.stride(0), bias.stride(1)
