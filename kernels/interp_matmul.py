"""Grouped fused-interpolation GEMM.

Computes, for rows grouped by ``offsets`` (rows ``offsets[g] .. offsets[g+1]-1`` form group g)::

    y[r] = x[r] @ (sum_i coeffs[g, i] * weight[i])^T + sum_i coeffs[g, i] * bias[i]

for all groups in one launch, without writing any interpolated weight to memory.
Interpolation and accumulation run in float32; the output has x's dtype.

One contract, several strategies (``registry``, one module each in ``kernels/strategies/``):
this module holds two of their kernels, autotuned by Triton:

* ``"combine"``: a schedule gives every row block one group id (blocks never straddle
  groups, like vLLM's fused_moe); each program interpolates its weight tile in registers
  (M tile loads, fp32 combine) and feeds it to ``tl.dot``.
* ``"rowscaled"``: y = sum_i diag(c_i) X W_i^T. Each row's coefficient c_i scales the X
  tile in registers; the W_i tiles go to ``tl.dot`` untouched. One GEMM over an M-times
  longer K; a coefficient per *row*, so any grouping runs at the same speed. Costs M x
  tensor-core FLOPs but no weight combine. Loop order: models outside, k-tiles inside, so
  a row's coefficient is loaded once per model per tile. **Not launched on Hopper**
  (fp16/bf16/TF32): its scaled x tile is wgmma's register A, which Triton's pipeliner
  rewrites while the wgmma may still read it (``dispatch.ROWSCALED_HAZARD``); there the
  default rule picks "epilogue" instead and a forced "rowscaled" runs "epilogue" with a
  warning. Off Hopper (mma.sync) and for fp32 IEEE (CUDA cores) it runs.

The others (``"swapab"``, ``"epilogue"``, ``"wstat"``) have their kernels in their own
modules and are launched by ``dispatch.launch``. ``interp_matmul`` reads the call's facts
and launches its plan (``planning``); ``plan_launch`` turns a combine/rowscaled call into
the exact kernel arguments, and the compile gate (``compile_variants`` below,
``compile_gate``) compiles the same plans for sm_90a on a CPU. Autotune only sees configs
whose modeled shared memory fits (``configs.fitting_configs``); ``choose_strategy`` never
picks a kernel with none.

The launcher validates nothing beyond what it needs to launch: callers (``dawin_fast.ops``)
check shapes, dtypes, devices and values.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import triton
import triton.language as tl

from . import planning, registry
from .common import bias_args, dot, tile_coords, use_ieee
from .configs import (
    PRUNE_COMBINE,
    PRUNE_ROWSCALED,
    combine_configs,
    interpreting,
    rows_bucket,
    rowscaled_configs,
    shared_bytes,
)
from .planning import (  # noqa: F401  (the rules' public names, re-exported)
    call_aligned,
    choose_strategy,
    default_strategy,
    fits,
    gpu_combine_block_m,
)

#: The autotuned strategies by name, for benchmarks/first_contact.py and triton_cache.py,
#: which do not walk ``registry`` yet (everything in kernels/ does).
OLD_STRATEGIES = planning.RULE_STRATEGIES


def candidates(x: torch.Tensor, weight: torch.Tensor, num_groups: int,
               factor: float = planning.MEASURE_FACTOR) -> list[tuple[str, str | None]]:
    """``planning.candidates`` of this call (the measured dispatch's (strategy, config)
    pairs, the model's pick first)."""
    return planning.candidates(planning.facts(x, weight, num_groups), factor)


@triton.autotune(configs=combine_configs(), key=["N", "K", "M", "ROWS_BUCKET", "BLOCK_M"],
                 prune_configs_by=PRUNE_COMBINE)
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
    pid_m, pid_n = tile_coords(tl.program_id(0), num_row_blocks, tl.cdiv(N, BLOCK_N), GROUP_M)
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
        acc = dot(x_tile, w_tile.to(x_tile.dtype), acc, IEEE)

    if HAS_BIAS:
        bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for i in range(0, M):
            coeff = tl.load(c_row + i * stride_cm)
            b_i = tl.load(b_ptr + i * stride_bm + offs_n * stride_bn, mask=col_mask, other=0.0)
            bias += coeff * b_i.to(tl.float32)
        acc += bias[None, :]

    y_ptrs = y_ptr + offs_m[:, None] * stride_yt + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.autotune(configs=rowscaled_configs(), key=["N", "K", "M", "ROWS_BUCKET"],
                 prune_configs_by=PRUNE_ROWSCALED)
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
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(T, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = offs_m < T
    col_mask = offs_n < N
    if SINGLE_GROUP:
        c_rows = c_ptr + tl.zeros((BLOCK_M,), dtype=tl.int64)
    else:
        groups = tl.load(row_group_ptr + offs_m, mask=row_mask, other=0)
        c_rows = c_ptr + groups.to(tl.int64) * stride_cg

    # Models outside, k-tiles inside: a row's coefficient is loaded once per model.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(0, M):
        coeff = tl.load(c_rows + i * stride_cm, mask=row_mask, other=0.0)
        w_model = w_ptr + tl.cast(i, tl.int64) * stride_wm
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            k_mask = offs_k < K
            x_tile = tl.load(
                x_ptr + offs_m[:, None] * stride_xt + offs_k[None, :] * stride_xk,
                mask=row_mask[:, None] & k_mask[None, :], other=0.0,
            )
            x_scaled = (x_tile.to(tl.float32) * coeff[:, None]).to(x_tile.dtype)
            w_tile = tl.load(
                w_model + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                mask=k_mask[:, None] & col_mask[None, :], other=0.0,
            )
            acc = dot(x_scaled, w_tile, acc, IEEE)

    if HAS_BIAS:
        for i in range(0, M):
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


def combine_block_m(num_rows: int, num_groups: int, dtype: torch.dtype) -> int:
    """``gpu_combine_block_m``, or 16 under the interpreter (small tests, many blocks)."""
    if interpreting():
        return 16
    return gpu_combine_block_m(num_rows, num_groups, dtype)


@dataclasses.dataclass
class Launch:
    """One kernel launch, fully decided: ``kernel[grid](*args, **kwargs)``."""

    strategy: str
    kernel: Any  #: the autotuned Triton kernel
    grid: Callable[[dict], tuple[int, ...]]
    args: tuple
    kwargs: dict

    def shared_bytes(self, config: triton.Config) -> int:
        """Modeled shared memory of this launch under ``config`` (configs.shared_bytes)."""
        dtype = self.args[0].dtype
        return shared_bytes(self.strategy, config, self.kwargs["M"], dtype,
                            self.kwargs["IEEE"], self.kwargs.get("BLOCK_M"))


def plan_launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    strategy: str,
) -> Launch:
    """The launch ``interp_matmul`` makes for these tensors (T, N, K > 0; ``y`` [T, N]).

    Builds the schedule (device ops, no host sync) and every kernel argument. Works on CPU
    tensors too: the compile gate plans real calls this way and compiles them for sm_90a.
    """
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    num_groups = coeffs.shape[0]
    bias_arg, stride_bm, stride_bn = bias_args(bias, weight)
    ieee = use_ieee(x.dtype)
    common = dict(
        stride_xt=x.stride(0), stride_xk=x.stride(1),
        stride_wm=weight.stride(0), stride_wn=weight.stride(1), stride_wk=weight.stride(2),
        stride_bm=stride_bm, stride_bn=stride_bn,
        stride_cg=coeffs.stride(0), stride_cm=coeffs.stride(1),
        stride_yt=y.stride(0), stride_yn=y.stride(1),
        M=num_models, SINGLE_GROUP=num_groups == 1, HAS_BIAS=bias is not None, IEEE=ieee,
    )
    bucket = rows_bucket(num_rows)

    if strategy == "rowscaled":
        groups = offsets if num_groups == 1 else row_groups(offsets, num_rows)

        def grid(meta):
            return (triton.cdiv(num_rows, meta["BLOCK_M"]) * triton.cdiv(n_dim, meta["BLOCK_N"]),)

        args = (x, weight, bias_arg, coeffs, y, groups, num_rows, n_dim, k_dim, bucket)
        return Launch(strategy, _rowscaled_kernel, grid, args, common)

    block_m = combine_block_m(num_rows, num_groups, x.dtype)
    if num_groups == 1:
        num_blocks = triton.cdiv(num_rows, block_m)
        block_group = block_row = offsets  # unused by the single-group path
    else:
        block_group, block_row = block_schedule(offsets, num_rows, block_m)
        num_blocks = block_group.numel()

    def grid(meta):
        return (num_blocks * triton.cdiv(n_dim, meta["BLOCK_N"]),)

    args = (x, weight, bias_arg, coeffs, y, block_group, block_row, offsets,
            num_blocks, n_dim, k_dim, bucket)
    return Launch(strategy, _combine_kernel, grid, args, dict(BLOCK_M=block_m, **common))


def interp_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    strategy: str | None = None,
    out: torch.Tensor | None = None,
    config: str | None = None,
    call: planning.Call | None = None,
) -> torch.Tensor:
    """Launch the grouped fused-interpolation GEMM.

    Args:
        x: [T, K] rows, fp32/fp16/bf16, grouped by ``offsets``.
        weight: [M, N, K], same dtype as x (any strides).
        coeffs: [G, M] float32.
        offsets: [G+1] int32/int64, offsets[0] = 0, non-decreasing, offsets[G] = T.
        bias: [M, N] or None.
        strategy: "combine", "rowscaled", "swapab", "epilogue", "wstat" or None
            (``choose_strategy``).
        out: optional [T, N] output (any strides) to write into instead of a new tensor.
        config: the config name of a "swapab"/"epilogue"/"wstat" call (``fused_configs``; the
            measured dispatch passes the one it timed), None for the model's; the old
            kernels autotune theirs.
        call: ``planning.facts(x, weight, G)`` when the caller has it already (the
            facts are read once per call).

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
    if call is None:
        call = planning.facts(x, weight, num_groups)
    return launch(planning.plan(call, strategy, config), x, weight, coeffs, offsets, bias, y)


def launch(plan: planning.Plan, x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
           offsets: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """Run ``plan`` (``planning.plan`` of these tensors' call) into ``y``."""
    if plan.rerouted:
        # A forced "rowscaled" on Hopper: rerouted, and said so (once per call site).
        warnings.warn(plan.rerouted, stacklevel=3)
    if plan.error:
        raise ValueError(plan.error)
    return registry.get(plan.strategy).launch(plan, x, weight, coeffs, offsets, bias, y)


def launch_autotuned(plan: planning.Plan, x: torch.Tensor, weight: torch.Tensor,
                     coeffs: torch.Tensor, offsets: torch.Tensor, bias: torch.Tensor | None,
                     y: torch.Tensor) -> torch.Tensor:
    """The launcher of "combine" and "rowscaled": their autotuned kernel, planned here."""
    run = plan_launch(x, weight, coeffs, offsets, bias, y, plan.strategy)
    run.kernel[run.grid](*run.args, **run.kwargs)
    return y


def _bias_only(y, coeffs, offsets, bias):
    if bias is None:
        return y.zero_()
    lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
    per_group = (coeffs.float() @ bias.float()).to(y.dtype)
    return y.copy_(torch.repeat_interleave(per_group, lengths, dim=0, output_size=y.shape[0]))


# ------------------------------------------------------------------------ compile gate

# The calls the compile gate builds (``gate_spec``): a ViT-B/32 MLP layer (K=768,
# N=3072) with its rows in one group (256 images x 50 tokens) or per sample (256 groups of
# 50 rows), and a layer whose sizes are not multiples of 16 (no alignment hints).
_GATE_LAYER = dict(k_dim=768, n_dim=3072)
_GATE_GROUPINGS = {"one group of 12800 rows": [12800], "256 groups x 50 rows": [50] * 256}
_GATE_FMA_REASON = ("fp32 with IEEE precision (F.linear's default) runs its dot on CUDA "
                    "cores by design; TF32 (allow_tf32) takes wgmma")
_GATE_FMA_MODEL = ("combine's FMA dot (fp32 IEEE) allocates a layout-conversion scratch that "
                   "varies with warps; the model is an upper bound there (model_bound holds)")
_GATE_ROWSCALED_HAZARD = ("rowscaled is never launched on sm_90 (dispatch.served_by: its calls "
                          "run the epilogue kernel there); gated to show the hazard "
                          "(triton-lang/triton#9433); off Hopper its dot is mma.sync")
_GATE_ADA_SPILL = ("combine's 32x32 w4 s2 tile spills 4 B on sm_89 at fp16 M = 16 per sample "
                   "(Triton 3.8); kept, as the only combine tile within Ada's 101 376 B at "
                   "M = 32 (configs.SPILLS_OFF_HOPPER)")
_GATE_UNALIGNED_MODEL = ("sizes not multiples of 16: Triton does not pipeline the loads, so "
                         "the compiled size is far below the pipelined model, an upper bound "
                         "(model_bound holds)")


def _gate_call(strategy: str, dtype: torch.dtype, num_models: int, lengths: list[int],
               k_dim: int, n_dim: int) -> Launch:
    """Plan a real call on CPU tensors (allocated, never touched) for the compile gate."""
    num_rows = sum(lengths)
    x = torch.empty((num_rows, k_dim), dtype=dtype)
    weight = torch.empty((num_models, n_dim, k_dim), dtype=dtype)
    bias = torch.empty((num_models, n_dim), dtype=dtype)
    coeffs = torch.empty((len(lengths), num_models), dtype=torch.float32)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    y = torch.empty((num_rows, n_dim), dtype=dtype)
    return plan_launch(x, weight, coeffs, offsets, bias, y, strategy)


def compile_variants() -> Iterator:
    """The compile gate's variants of both kernels: every dtype, M in {1, 2, 8, 16, 32}
    (bf16) / {2, 8, 16, 32} (fp16), one group and per-sample groups; fp32 (IEEE and TF32)
    and unaligned sizes at M=2. The 16-bit M <= 16 aligned calls are ``core`` (also
    compiled on the H100's Triton 3.6)."""
    from .gate_spec import Variant

    def variant(strategy, case, launch, core, allow=None, allow_off_hopper=None):
        allow = dict(allow or {})
        if strategy == "rowscaled":
            allow["a_hazard"] = _GATE_ROWSCALED_HAZARD
        return Variant(kernel=strategy, case=case, fn=launch.kernel, args=launch.args,
                       kwargs=launch.kwargs, shared_model=launch.shared_bytes,
                       allow=allow, core=core, allow_off_hopper=allow_off_hopper or {})

    for strategy in planning.RULE_STRATEGIES:  # the other kernels' modules declare theirs
        for dtype, models in ((torch.bfloat16, (1, 2, 8, 16, 32)),
                              (torch.float16, (2, 8, 16, 32))):
            name = str(dtype).removeprefix("torch.")
            for num_models in models:
                for grouping, lengths in _GATE_GROUPINGS.items():
                    launch = _gate_call(strategy, dtype, num_models, lengths, **_GATE_LAYER)
                    ada = strategy == "combine" and num_models >= 16
                    yield variant(strategy, f"{name} M={num_models}, {grouping}", launch,
                                  core=2 <= num_models <= 16,
                                  allow_off_hopper={"spill": _GATE_ADA_SPILL} if ada else None)
        for tf32 in (False, True):
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                for grouping, lengths in _GATE_GROUPINGS.items():
                    launch = _gate_call(strategy, torch.float32, 2, lengths, **_GATE_LAYER)
                    allow = {} if tf32 else {"wgmma": _GATE_FMA_REASON}
                    if strategy == "combine" and not tf32:
                        allow["model"] = _GATE_FMA_MODEL
                    yield variant(strategy, f"float32 {'TF32' if tf32 else 'IEEE'} M=2, "
                                  f"{grouping}", launch, core=False, allow=allow)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous
        for grouping, lengths in _GATE_GROUPINGS.items():
            launch = _gate_call(strategy, torch.bfloat16, 2, lengths, k_dim=200, n_dim=1000)
            yield variant(strategy, f"bfloat16 M=2, {grouping}, K=200 N=1000", launch,
                          core=False, allow={"model": _GATE_UNALIGNED_MODEL})
