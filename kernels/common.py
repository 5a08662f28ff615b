"""Pieces every kernel module shares: the program-to-tile order, the dot that honours IEEE
fp32 and when to ask it for IEEE, the bias arguments, the TMA layout check."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def tile_coords(pid, num_tiles, num_n_tiles, GROUP_T: tl.constexpr):
    """Program id -> (row tile, N tile), in GROUP_T-tall bands so that programs running
    together share x row tiles and weight N tiles in L2."""
    per_band = GROUP_T * num_n_tiles
    band = pid // per_band
    first = band * GROUP_T
    band_t = tl.minimum(num_tiles - first, GROUP_T)
    tile = first + (pid % per_band) % band_t
    n_tile = (pid % per_band) // band_t
    return tile, n_tile


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b``; IEEE keeps fp32 exact (F.linear's default) instead of TF32."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


def use_ieee(dtype: torch.dtype) -> bool:
    """fp32 inputs: full-precision dot unless the user opted into TF32, like F.linear."""
    return dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32


def bias_args(bias: torch.Tensor | None, weight: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(pointer, stride_bm, stride_bn) for an optional [M, N] bias. Without one, weight
    stands in for the pointer: never read when HAS_BIAS is False."""
    if bias is None:
        return weight, 0, 0
    return bias, bias.stride(0), bias.stride(1)


def tma_layout_reason(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """None if TMA descriptors can address x [T, K] and weight as [M*N, K] (contiguous
    16-byte-aligned rows, models stacked back to back), else why not."""
    elem = x.element_size()
    if x.stride(1) != 1 or (x.stride(0) * elem) % 16 or x.data_ptr() % 16:
        return "x rows are not contiguous 16-byte-aligned runs"
    num_models, n_dim, _ = weight.shape
    if weight.stride(2) != 1 or (weight.stride(1) * elem) % 16 or weight.data_ptr() % 16:
        return "weight rows are not contiguous 16-byte-aligned runs"
    if num_models > 1 and weight.stride(0) != n_dim * weight.stride(1):
        return "weight models are not stacked back to back ([M*N, K] view)"
    return None
