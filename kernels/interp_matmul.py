"""Grouped fused-interpolation GEMM.

Computes, for rows grouped by ``offsets`` (rows ``offsets[g] .. offsets[g+1]-1`` form group g)::

    y[r] = x[r] @ (sum_i coeffs[g, i] * weight[i])^T + sum_i coeffs[g, i] * bias[i]

for all groups in one launch, without writing any interpolated weight to memory.
Interpolation and accumulation run in float32; the output has x's dtype.

Four strategies, one contract:

* ``"combine"``: a schedule gives every row block one group id (blocks never straddle
  groups, like vLLM's fused_moe); each program interpolates its weight tile in registers
  (M tile loads, fp32 combine) and feeds it to ``tl.dot``.
* ``"rowscaled"``: y = sum_i diag(c_i) X W_i^T. Each row's coefficient c_i scales the X
  tile in registers; the W_i tiles go to ``tl.dot`` untouched. One GEMM over an M-times
  longer K; a coefficient per *row*, so any grouping runs at the same speed. Costs M x
  tensor-core FLOPs but no weight combine.
* ``"swapab"`` and ``"epilogue"`` (issue 11, ``dispatch``): the Gluon swap-AB
  register-combine kernel for Hopper (its plain-Triton twin wherever Gluon cannot run), and
  the epilogue-scaled multi-GEMM.

The launcher validates nothing beyond what it needs to launch: callers (``dawin_fast.ops``)
check shapes, dtypes, devices and values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import dispatch
from .configs import combine_configs, interpreting, rows_bucket, rowscaled_configs

STRATEGIES = ("combine", "rowscaled") + dispatch.NEW_STRATEGIES

# Mean rows per group below which "rowscaled" is the default. From the H100 probes in
# DESIGN.md §4 (bf16, M=2): row-scaled beat the combine kernel on every measured case with
# groups of 50-400 rows (e.g. ViT-B/32 fc1 per-sample: 0.257 ms vs 0.383 ms). Larger groups
# were not measured yet; the combine kernel's per-block weight combine amortises over more
# rows there while row-scaled keeps its M x FLOPs, so they default to "combine".
ROWSCALED_MAX_MEAN_ROWS = 512


def default_strategy(num_rows: int, num_groups: int, num_models: int,
                     n_dim: int | None = None, k_dim: int | None = None,
                     target: dispatch.Target | None = None) -> str:
    """The strategy ``interp_matmul`` uses when none is given.

    Where the Gluon kernel can run (``target``: CUDA sm_90, fp16/bf16, TMA-addressable)
    the traffic model picks among the issue-11 kernels (``dispatch.choose``: model, not
    measured); elsewhere the measured rule below.
    """
    if target is not None and n_dim is not None and k_dim is not None:
        choice = dispatch.choose(num_rows, num_groups, num_models, n_dim, k_dim, target)
        if choice is not None:
            return choice.strategy
    if num_rows < ROWSCALED_MAX_MEAN_ROWS * max(num_groups, 1):
        return "rowscaled"
    return "combine"


@triton.jit
def _swizzle(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Map a 1-D program id to (pid_m, pid_n) in GROUP_M-tall column bands (L2 reuse)."""
    num_pid_in_band = GROUP_M * num_pid_n
    band = pid // num_pid_in_band
    first_pid_m = band * GROUP_M
    band_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_band) % band_m
    pid_n = (pid % num_pid_in_band) // band_m
    return pid_m, pid_n


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.autotune(configs=combine_configs(), key=["N", "K", "M", "ROWS_BUCKET", "BLOCK_M"])
@triton.jit
def _combine_kernel(
    x_ptr, w_ptr, b_ptr, c_ptr, y_ptr,
    block_group_ptr, block_row_ptr, offsets_ptr,
    num_row_blocks, N, K, ROWS_BUCKET,
    stride_xt, stride_xk,
    stride_wm, stride_wn, stride_wk,
    stride_bm, stride_bn,
    stride_cg, stride_cm,
    stride_yt, stride_yn,
    M: tl.constexpr,
    SINGLE_GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _swizzle(tl.program_id(0), num_row_blocks, tl.cdiv(N, BLOCK_N), GROUP_M)
    if SINGLE_GROUP:
        c_row = c_ptr
        row_start = pid_m.to(tl.int64) * BLOCK_M
        row_end = tl.load(offsets_ptr + 1).to(tl.int64)
    else:
        g = tl.load(block_group_ptr + pid_m)
        if g < 0:  # spare block: the grid is an upper bound, so no host sync is needed
            return
        c_row = c_ptr + g.to(tl.int64) * stride_cg
        row_start = tl.load(block_row_ptr + pid_m).to(tl.int64)
        row_end = tl.load(offsets_ptr + g + 1).to(tl.int64)

    offs_m = row_start + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = offs_m < row_end
    col_mask = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = offs_k < K
        x_tile = tl.load(
            x_ptr + offs_m[:, None] * stride_xt + offs_k[None, :] * stride_xk,
            mask=row_mask[:, None] & k_mask[None, :], other=0.0,
        )
        # The interpolated weight tile, [BLOCK_K, BLOCK_N] (W^T), combined in fp32.
        w_tile = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        w_offs = offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
        w_mask = k_mask[:, None] & col_mask[None, :]
        for i in tl.static_range(M):
            coeff = tl.load(c_row + i * stride_cm)
            w_i = tl.load(w_ptr + i * stride_wm + w_offs, mask=w_mask, other=0.0)
            w_tile += coeff * w_i.to(tl.float32)
        acc = _dot(x_tile, w_tile.to(x_tile.dtype), acc, IEEE)

    if HAS_BIAS:
        bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for i in tl.static_range(M):
            coeff = tl.load(c_row + i * stride_cm)
            b_i = tl.load(b_ptr + i * stride_bm + offs_n * stride_bn, mask=col_mask, other=0.0)
            bias += coeff * b_i.to(tl.float32)
        acc += bias[None, :]

    y_ptrs = y_ptr + offs_m[:, None] * stride_yt + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.autotune(configs=rowscaled_configs(), key=["N", "K", "M", "ROWS_BUCKET"])
@triton.jit
def _rowscaled_kernel(
    x_ptr, w_ptr, b_ptr, c_ptr, y_ptr,
    row_group_ptr,
    T, N, K, ROWS_BUCKET,
    stride_xt, stride_xk,
    stride_wm, stride_wn, stride_wk,
    stride_bm, stride_bn,
    stride_cg, stride_cm,
    stride_yt, stride_yn,
    M: tl.constexpr,
    SINGLE_GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _swizzle(tl.program_id(0), tl.cdiv(T, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = offs_m < T
    col_mask = offs_n < N
    if SINGLE_GROUP:
        c_rows = c_ptr + tl.zeros((BLOCK_M,), dtype=tl.int64)
    else:
        groups = tl.load(row_group_ptr + offs_m, mask=row_mask, other=0)
        c_rows = c_ptr + groups.to(tl.int64) * stride_cg

    # One loop over the M-times-longer reduction: iteration it covers model it // k_tiles.
    k_tiles = tl.cdiv(K, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(0, M * k_tiles):
        i = it // k_tiles
        offs_k = (it % k_tiles) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = offs_k < K
        coeff = tl.load(c_rows + i * stride_cm, mask=row_mask, other=0.0)
        x_tile = tl.load(
            x_ptr + offs_m[:, None] * stride_xt + offs_k[None, :] * stride_xk,
            mask=row_mask[:, None] & k_mask[None, :], other=0.0,
        )
        x_scaled = (x_tile.to(tl.float32) * coeff[:, None]).to(x_tile.dtype)
        w_tile = tl.load(
            w_ptr + i.to(tl.int64) * stride_wm
            + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
            mask=k_mask[:, None] & col_mask[None, :], other=0.0,
        )
        acc = _dot(x_scaled, w_tile, acc, IEEE)

    if HAS_BIAS:
        for i in tl.static_range(M):
            coeff = tl.load(c_rows + i * stride_cm, mask=row_mask, other=0.0)
            b_i = tl.load(b_ptr + i * stride_bm + offs_n * stride_bn, mask=col_mask, other=0.0)
            acc += coeff[:, None] * b_i.to(tl.float32)[None, :]

    y_ptrs = y_ptr + offs_m[:, None] * stride_yt + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def block_schedule(
    offsets: torch.Tensor, num_rows: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row-block group ids and first rows, on the device, without a host sync.

    Group g gets ceil(len_g / block_m) blocks, none shared with another group. The
    returned arrays have an upper-bound length (``min(T, T // block_m + G)``); spare
    entries have group id -1 and the kernel skips them.
    """
    num_groups = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    blocks = (lengths + (block_m - 1)) // block_m
    blocks_end = torch.cumsum(blocks, 0)
    upper = min(num_rows, num_rows // block_m + num_groups)
    block_ids = torch.arange(upper, device=offsets.device, dtype=blocks_end.dtype)
    group = torch.searchsorted(blocks_end, block_ids, right=True)
    valid = group < num_groups
    group = group.clamp_(max=num_groups - 1)
    first_block = blocks_end[group] - blocks[group]
    first_row = offsets[group] + (block_ids - first_block) * block_m
    block_group = torch.where(valid, group, -1).to(torch.int32)
    return block_group, first_row.to(torch.int64)


def row_groups(offsets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Group id of every row, int32 [T]."""
    rows = torch.arange(num_rows, device=offsets.device, dtype=offsets.dtype)
    return torch.searchsorted(offsets[1:], rows, right=True).to(torch.int32)


def combine_block_m(num_rows: int, num_groups: int) -> int:
    """Row-block height of the combine kernel (fixed per call: the schedule depends on it)."""
    if interpreting():
        return 16
    mean_rows = num_rows / max(num_groups, 1)
    return 64 if mean_rows <= 64 else 128


def interp_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    strategy: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the grouped fused-interpolation GEMM.

    Args:
        x: [T, K] rows, fp32/fp16/bf16, grouped by ``offsets``.
        weight: [M, N, K], same dtype as x (any strides).
        coeffs: [G, M] float32.
        offsets: [G+1] int32/int64, offsets[0] = 0, non-decreasing, offsets[G] = T.
        bias: [M, N] or None.
        strategy: "combine", "rowscaled", "swapab", "epilogue" or None
            (``default_strategy``).
        out: optional [T, N] output (any strides) to write into instead of a new tensor.

    Returns:
        y: [T, N] in x's dtype.
    """
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    num_groups = coeffs.shape[0]
    if out is None:
        y = torch.empty((num_rows, n_dim), device=x.device, dtype=x.dtype)
    else:
        if out.shape != (num_rows, n_dim) or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(
                f"interp_matmul: out must be [{num_rows}, {n_dim}] {x.dtype} on {x.device}"
            )
        y = out
    if num_rows == 0 or n_dim == 0:
        return y
    if k_dim == 0:  # an empty reduction: only the interpolated bias remains
        return _bias_only(y, coeffs, offsets, bias)
    if strategy is None:
        strategy = default_strategy(num_rows, num_groups, num_models, n_dim, k_dim,
                                    dispatch.target_for(x, weight))
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy in dispatch.NEW_STRATEGIES:
        return dispatch.launch(strategy, x, weight, coeffs, offsets, bias, y)

    has_bias = bias is not None
    bias_arg = bias if has_bias else weight  # never read when HAS_BIAS is False
    stride_b = (bias.stride(0), bias.stride(1)) if has_bias else (0, 0)
    # fp32 inputs: full-precision dot unless the user opted into TF32, like F.linear.
    ieee = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    common = dict(
        stride_xt=x.stride(0), stride_xk=x.stride(1),
        stride_wm=weight.stride(0), stride_wn=weight.stride(1), stride_wk=weight.stride(2),
        stride_bm=stride_b[0], stride_bn=stride_b[1],
        stride_cg=coeffs.stride(0), stride_cm=coeffs.stride(1),
        stride_yt=y.stride(0), stride_yn=y.stride(1),
        M=num_models, SINGLE_GROUP=num_groups == 1, HAS_BIAS=has_bias, IEEE=ieee,
    )
    bucket = rows_bucket(num_rows)

    if strategy == "rowscaled":
        groups = offsets if num_groups == 1 else row_groups(offsets, num_rows)

        def grid(meta):
            return (triton.cdiv(num_rows, meta["BLOCK_M"]) * triton.cdiv(n_dim, meta["BLOCK_N"]),)

        _rowscaled_kernel[grid](
            x, weight, bias_arg, coeffs, y, groups,
            num_rows, n_dim, k_dim, bucket, **common,
        )
        return y

    block_m = combine_block_m(num_rows, num_groups)
    if num_groups == 1:
        num_blocks = triton.cdiv(num_rows, block_m)
        block_group = block_row = offsets  # unused by the single-group path
    else:
        block_group, block_row = block_schedule(offsets, num_rows, block_m)
        num_blocks = block_group.numel()

    def grid(meta):
        return (num_blocks * triton.cdiv(n_dim, meta["BLOCK_N"]),)

    _combine_kernel[grid](
        x, weight, bias_arg, coeffs, y, block_group, block_row, offsets,
        num_blocks, n_dim, k_dim, bucket, BLOCK_M=block_m, **common,
    )
    return y


def _bias_only(y, coeffs, offsets, bias):
    if bias is None:
        return y.zero_()
    lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
    per_group = (coeffs.float() @ bias.float()).to(y.dtype)
    return y.copy_(torch.repeat_interleave(per_group, lengths, dim=0, output_size=y.shape[0]))
