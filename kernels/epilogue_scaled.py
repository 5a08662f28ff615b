"""Epilogue-scaled multi-GEMM: y = sum_i c_i[row] * (x W_i^T) + sum_i c_i[row] b_i.

Each product x W_i^T is a plain GEMM: x and W_i tiles go from memory to the tensor cores
untouched (TMA tensor descriptors when the strides allow, else pointer loads that Triton
pipelines with cp.async), accumulated in fp32. When the last k-step of model i is done,
the accumulator is scaled per row by that row's coefficient c_i and added to the output
tile. No weight combine on the CUDA cores, no scaled copy of x, and a coefficient per row,
so any grouping (per sample, per token) runs at the same speed. It costs M times the
tensor-core FLOPs of one GEMM and reads x M times.

One flattened loop over (model, k-step) keeps the load pipeline full across model
boundaries; only the accumulator read at a boundary waits for the MMAs in flight.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import bias_args, dot, tile_coords, tma_layout_reason
from .fused_configs import EpilogueConfig
from .planned import PlannedLaunch

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton without host tensor descriptors: pointer path only
    TensorDescriptor = None


@triton.jit
def _epilogue_scaled_kernel(
    x_src, w_src, b_ptr, c_ptr, y_ptr, row_group_ptr,
    T, N, K,
    stride_xt, stride_xk,
    stride_wm, stride_wn, stride_wk,
    stride_bm, stride_bn,
    stride_cg, stride_cm,
    stride_yt, stride_yn,
    M: tl.constexpr,
    SINGLE_GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """x_src/w_src: TMA descriptors of x [T, K] and weight as [M*N, K] (USE_TMA), else
    the x and weight pointers."""
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(T, BLOCK_M), tl.cdiv(N, BLOCK_N),
                               GROUP_M)
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    offs_m = m0.to(tl.int64) + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = n0.to(tl.int64) + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = offs_m < T
    col_mask = offs_n < N
    if SINGLE_GROUP:
        c_rows = c_ptr
    else:
        groups = tl.load(row_group_ptr + offs_m, mask=row_mask, other=0)
        c_rows = c_ptr + groups.to(tl.int64) * stride_cg

    k_tiles = tl.cdiv(K, BLOCK_K)
    out = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in tl.range(0, M * k_tiles, num_stages=NUM_STAGES):
        i = it // k_tiles
        kt = it - i * k_tiles
        if USE_TMA:
            x_tile = x_src.load([m0, kt * BLOCK_K])
            w_tile = w_src.load([i * N + n0, kt * BLOCK_K])
        else:
            offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
            k_mask = offs_k < K
            x_tile = tl.load(
                x_src + offs_m[:, None] * stride_xt + offs_k[None, :] * stride_xk,
                mask=row_mask[:, None] & k_mask[None, :], other=0.0,
            )
            w_tile = tl.load(
                w_src + i.to(tl.int64) * stride_wm
                + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                mask=col_mask[:, None] & k_mask[None, :], other=0.0,
            )
        acc = dot(x_tile, w_tile.T, acc, IEEE)
        if kt == k_tiles - 1:  # model i done: scale its product per row, start the next
            if SINGLE_GROUP:
                out += tl.load(c_rows + i * stride_cm) * acc
            else:
                coeff = tl.load(c_rows + i * stride_cm, mask=row_mask, other=0.0)
                out += coeff[:, None] * acc
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    if HAS_BIAS:
        for i in range(M):
            b_i = tl.load(b_ptr + i * stride_bm + offs_n * stride_bn, mask=col_mask, other=0.0)
            if SINGLE_GROUP:
                out += tl.load(c_rows + i * stride_cm) * b_i.to(tl.float32)[None, :]
            else:
                coeff = tl.load(c_rows + i * stride_cm, mask=row_mask, other=0.0)
                out += coeff[:, None] * b_i.to(tl.float32)[None, :]

    y_ptrs = y_ptr + offs_m[:, None] * stride_yt + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def row_groups(offsets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Group id of every row, int32 [T] (on offsets' device, no host sync)."""
    rows = torch.arange(num_rows, device=offsets.device, dtype=offsets.dtype)
    return torch.searchsorted(offsets[1:], rows, right=True).to(torch.int32)


def tma_reason(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """None if x [T, K] and weight as [M*N, K] can be TMA descriptors, else why not."""
    if TensorDescriptor is None:
        return "this Triton has no host tensor descriptors"
    return tma_layout_reason(x, weight)


def epilogue_scaled_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    cfg: EpilogueConfig,
    *,
    group_m: int = 8,
    use_tma: bool | None = None,
    ieee: bool = False,
) -> torch.Tensor:
    """Launch into ``y`` ([T, N], any strides). Rows, N and K must be > 0.

    ``use_tma=None`` uses tensor descriptors whenever ``tma_reason`` allows them.
    """
    plan_epilogue_scaled(x, weight, coeffs, offsets, bias, y, cfg, group_m=group_m,
                         use_tma=use_tma, ieee=ieee).run()
    return y


def plan_epilogue_scaled(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    cfg: EpilogueConfig,
    *,
    group_m: int = 8,
    use_tma: bool | None = None,
    ieee: bool = False,
) -> PlannedLaunch:
    """The launch ``epilogue_scaled_matmul`` makes (CPU tensors too: the compile gate's
    way)."""
    block_m, block_n, block_k = cfg.block_m, cfg.block_n, cfg.block_k
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    single = coeffs.shape[0] == 1
    reason = tma_reason(x, weight)
    if use_tma is None:
        use_tma = reason is None
    elif use_tma and reason is not None:
        raise ValueError(f"epilogue_scaled: TMA requested but {reason}")
    if use_tma:
        w2d = weight.as_strided((num_models * n_dim, k_dim), (weight.stride(1), 1))
        x_src = TensorDescriptor.from_tensor(x, [block_m, block_k])
        w_src = TensorDescriptor.from_tensor(w2d, [block_n, block_k])
    else:
        x_src, w_src = x, weight
    groups = offsets if single else row_groups(offsets, num_rows)
    bias_arg, stride_bm, stride_bn = bias_args(bias, weight)
    grid = (triton.cdiv(num_rows, block_m) * triton.cdiv(n_dim, block_n),)
    args = (x_src, w_src, bias_arg, coeffs, y, groups,
            num_rows, n_dim, k_dim,
            x.stride(0), x.stride(1),
            weight.stride(0), weight.stride(1), weight.stride(2),
            stride_bm, stride_bn,
            coeffs.stride(0), coeffs.stride(1),
            y.stride(0), y.stride(1))
    kwargs = dict(
        M=num_models, SINGLE_GROUP=single, HAS_BIAS=bias is not None, IEEE=ieee, USE_TMA=use_tma,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return PlannedLaunch(_epilogue_scaled_kernel, grid, args, kwargs)


# ------------------------------------------------------------------------ compile gate

_GATE_ROWS = 4096
_GATE_LAYER = dict(n_dim=3072, k_dim=768)
_GATE_UNALIGNED = ("K = 770: rows are not 16-byte aligned, so neither TMA nor cp.async can "
                   "load them; Triton falls back to synchronous loads (wait depth 0) and "
                   "spills at 8 warps. Correctness fallback for odd shapes, reached only by "
                   "an explicit strategy='epilogue' (the default rule needs TMA-addressable "
                   "operands)")
_GATE_FMA = ("fp32 with IEEE precision (F.linear's default) runs its dot on CUDA cores by "
             "design; TF32 (allow_tf32) takes wgmma")


_GATE_SPILLS_OFF_HOPPER = ("with pointer loads and mma.sync (sm_80, sm_89; Triton 3.8) the 16-bit "
                           "and TF32 configs spill 8-36 B: the dispatch never picks the "
                           "epilogue kernel off Hopper (dispatch.candidates), only an "
                           "explicit strategy='epilogue' runs it there")


def compile_variants():
    """The compile gate's variants of the epilogue-scaled kernel, as ``dispatch.launch``
    plans it (``plan_epilogue_scaled`` with ``fused_configs.epilogue_config``'s tiles):
    every 16-bit config at M = 2 (per-sample), 8 (one group) and 32, on TMA descriptors;
    the pointer-load fallback (models not stacked; K = 770, unaligned); fp32 IEEE and TF32
    at M = 2. Held to wgmma, main-loop wait depth >= 1 and, on descriptors, TMA loads."""
    from . import arch
    from .fused_configs import EPILOGUE_CONFIGS, epilogue_config, epilogue_fits
    from .gate_spec import DEFAULT_CHECKS, Variant, grouping, stand_in_call

    def variant(name, dtype, num_models, num_groups, *, ieee=False, k_dim=768, stacked=True,
                core=True, allow=None, use_tma=None, targets=None, allow_off_hopper=None):
        cfg = epilogue_config(name, dtype, ieee)
        rows, lengths = grouping(_GATE_ROWS, num_groups)
        call = stand_in_call(lengths, num_models, dtype=dtype, stacked=stacked,
                             **{**_GATE_LAYER, "k_dim": k_dim})
        plan = plan_epilogue_scaled(*call, cfg, ieee=ieee, use_tma=use_tma)
        tma = plan.kwargs["USE_TMA"]
        precision = " IEEE" if ieee else " TF32" if dtype == torch.float32 else ""
        extra = ("" if tma else ", pointer loads") + (f", K={k_dim}" if k_dim != 768 else "")
        extra += "" if stacked else " (models not stacked)"
        return Variant(
            kernel="epilogue",
            case=f"{str(dtype).removeprefix('torch.')}{precision} M={num_models}, {rows}"
                 f"{extra}",
            fn=plan.kernel, args=plan.args, kwargs=plan.kwargs, config=cfg.name,
            tiles=f"M={cfg.block_m} N={cfg.block_n} K={cfg.block_k} w={cfg.num_warps} "
                  f"s={cfg.num_stages}",
            checks=(*DEFAULT_CHECKS, "wait", *(("tma",) if tma else ())), core=core,
            allow=allow or {}, targets=targets, allow_off_hopper=allow_off_hopper or {})

    for cfg in EPILOGUE_CONFIGS:
        yield variant(cfg.name, torch.bfloat16, 2, 256)
        yield variant(cfg.name, torch.float16, 8, 1)
        yield variant(cfg.name, torch.bfloat16, 32, 256)
    yield variant("e64x128", torch.float16, 16, 3, stacked=False,
                  allow_off_hopper={"spill": _GATE_SPILLS_OFF_HOPPER})
    yield variant("e128x128", torch.bfloat16, 2, 256, k_dim=770,
                  allow={"spill": _GATE_UNALIGNED, "wait": _GATE_UNALIGNED})
    yield variant("e128x128", torch.float32, 2, 256, ieee=True, core=False,
                  allow={"wgmma": _GATE_FMA, "wait": _GATE_FMA})
    yield variant("e128x128", torch.float32, 2, 256, core=False)
    # Off Hopper dispatch.launch never uses TMA descriptors (Gluon and TMA are sm_90 only):
    # every config with pointer loads there, where only an explicit strategy="epilogue"
    # sends calls.
    off_hopper = dict(use_tma=False, core=False, targets=("sm_80", "sm_89"),
                      allow_off_hopper={"spill": _GATE_SPILLS_OFF_HOPPER})
    for cfg in EPILOGUE_CONFIGS:  # each where it fits (e128x128: not on Ada)
        targets = tuple(a.name for a in (arch.AMPERE, arch.ADA)
                        if epilogue_fits(cfg.name, torch.bfloat16, a.smem_limit))
        yield variant(cfg.name, torch.bfloat16, 2, 256, **{**off_hopper, "targets": targets})
    yield variant("e128x128", torch.float32, 2, 256, ieee=True,
                  allow={"wgmma": _GATE_FMA, "wait": _GATE_FMA}, **off_hopper)
    yield variant("e128x128", torch.float32, 2, 256, **off_hopper)
