"""Plain-Triton twin of the weight-stationary Gluon kernel (``wstat_gluon``).

Same runs (``schedule.call_schedule`` with ``fused_configs.wstat_run_rows``-row runs of one
group), same program order (N tiles fastest), same tiles (BLOCK_N weight rows, BLOCK_T
rows per row block, BLOCK_K slices), same operand roles (W_c = sum_i c_i W_i combined in
fp32 and cast to x's dtype is A, x^T is B: the program computes y^T) and the same
epilogue (bias sum_i c_i b_i, masked store of the run's own rows). What differs is only
what Triton cannot express without Gluon: there is no resident shared-memory tile, so
the twin recombines each K slice of W_c for every row block instead of once per program;
no TMA ring, no asynchronous MMA.

It exists so that the runs, the masks and the arithmetic of the Gluon kernel are tested
on the CPU: Gluon kernels do not run under ``TRITON_INTERPRET=1``, this one does. On a GPU
it is strategy "wstat"'s fallback where the Gluon kernel cannot run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import bias_args, dot
from .configs import interpreting
from .fused_configs import INTERPRETER_SMS, WStatConfig, wstat_run_rows
from .planned import PlannedLaunch
from .schedule import call_schedule


@triton.jit
def _wstat_twin_kernel(
    x_ptr, w_ptr, b_ptr, c_ptr, y_ptr,
    run_group_ptr, run_row_ptr, offsets_ptr,
    run_rows, N, K,
    stride_xt, stride_xk,
    stride_wm, stride_wn, stride_wk,
    stride_bm, stride_bn,
    stride_cg, stride_cm,
    stride_yt, stride_yn,
    M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SINGLE_GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
):
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    run = pid // n_tiles
    n0 = (pid - run * n_tiles) * BLOCK_N
    if SINGLE_GROUP:
        group = run * 0
        first = run * run_rows
        group_end = tl.load(offsets_ptr + 1).to(tl.int32)
    else:
        group = tl.load(run_group_ptr + run)
        if group < 0:  # spare run, as in Gluon
            return
        first = tl.load(run_row_ptr + run)
        group_end = tl.load(offsets_ptr + group + 1).to(tl.int32)
    end = tl.minimum(first + run_rows, group_end)
    c_row = c_ptr + group.to(tl.int64) * stride_cg
    offs_n = n0.to(tl.int64) + tl.arange(0, BLOCK_N).to(tl.int64)
    n_mask = offs_n < N
    bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_BIAS:
        for i in range(M):
            b_i = tl.load(b_ptr + i * stride_bm + offs_n * stride_bn, mask=n_mask, other=0.0)
            bias += tl.load(c_row + i * stride_cm) * b_i.to(tl.float32)
    for blk in range(tl.cdiv(end - first, BLOCK_T)):
        offs_t = (first + blk * BLOCK_T).to(tl.int64) + tl.arange(0, BLOCK_T).to(tl.int64)
        # Rows past the run (next group, past T) are computed as in Gluon, never stored;
        # rows past T read as zeros, like TMA's out-of-bounds fill.
        x_rows = offs_t < end
        acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)  # y^T of the row block
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            k_mask = offs_k < K
            w_offs = offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
            w_mask = n_mask[:, None] & k_mask[None, :]
            w_c = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for i in range(M):
                w_i = tl.load(w_ptr + i * stride_wm + w_offs, mask=w_mask, other=0.0)
                w_c += tl.load(c_row + i * stride_cm) * w_i.to(tl.float32)
            x_t = tl.load(  # x^T slice [BLOCK_K, BLOCK_T]
                x_ptr + offs_t[None, :] * stride_xt + offs_k[:, None] * stride_xk,
                mask=x_rows[None, :] & k_mask[:, None], other=0.0,
            )
            acc = dot(w_c.to(x_t.dtype), x_t, acc, IEEE)
        acc += bias[:, None]
        y_ptrs = y_ptr + offs_t[None, :] * stride_yt + offs_n[:, None] * stride_yn
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty),
                 mask=n_mask[:, None] & x_rows[None, :])


def wstat_twin_matmul(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
                      offsets: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                      cfg: WStatConfig, *, ieee: bool = False) -> torch.Tensor:
    """Launch the twin into ``y`` ([T, N], any strides). Rows, N and K must be > 0."""
    plan_wstat_twin(x, weight, coeffs, offsets, bias, y, cfg, ieee=ieee).run()
    return y


def plan_wstat_twin(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
                    offsets: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                    cfg: WStatConfig, *, ieee: bool = False) -> PlannedLaunch:
    """The launch ``wstat_twin_matmul`` makes (CPU tensors too: the compile gate's way)."""
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    num_groups = coeffs.shape[0]
    sms = INTERPRETER_SMS if interpreting() else 132
    run_rows = wstat_run_rows(num_rows, num_groups, n_dim, cfg, sms)
    sched = call_schedule(offsets, num_rows, num_groups, run_rows, 1)
    bias_arg, stride_bm, stride_bn = bias_args(bias, weight)
    grid = (sched.num_tiles * triton.cdiv(n_dim, cfg.block_n),)
    args = (x, weight, bias_arg, coeffs, y, sched.slot_group, sched.slot_row, offsets,
            run_rows, n_dim, k_dim,
            x.stride(0), x.stride(1),
            weight.stride(0), weight.stride(1), weight.stride(2),
            stride_bm, stride_bn,
            coeffs.stride(0), coeffs.stride(1),
            y.stride(0), y.stride(1))
    kwargs = dict(M=num_models, BLOCK_N=cfg.block_n, BLOCK_T=cfg.block_t, BLOCK_K=cfg.block_k,
                  SINGLE_GROUP=num_groups == 1, HAS_BIAS=bias is not None, IEEE=ieee,
                  num_warps=cfg.num_warps, num_stages=1)
    return PlannedLaunch(_wstat_twin_kernel, grid, args, kwargs)


# ------------------------------------------------------------------------ compile gate

_GATE_NO_OVERLAP = ("the twin has no asynchronous MMA (no TMA ring, num_stages=1): each "
                    "k-step's dot waits for the last by design. It runs on a GPU only where "
                    "the Gluon kernel cannot, as strategy 'wstat''s fallback; the default "
                    "rule never picks it")
_GATE_FMA = ("fp32 with IEEE precision (F.linear's default) runs its dot on CUDA cores by "
             "design; TF32 (allow_tf32) takes wgmma")


def compile_variants():
    """The compile gate's variants of the twin, as ``dispatch.launch`` runs it on a GPU
    (``fused_configs.wstat_twin_config``'s tiles): each config's layer in bf16/fp16 at
    M = 2 and 8 (one group, 3 clusters), and fp32 (IEEE and TF32) at M = 2."""
    from .fused_configs import WSTAT_CONFIGS, wstat_twin_config
    from .gate_spec import DEFAULT_CHECKS, Variant, grouping, stand_in_call
    from .wstat_gluon import GATE_LAYERS, GATE_ROWS

    def variant(name, dtype, num_models, num_groups, ieee=False, core=True, allow=None):
        cfg = wstat_twin_config(name, dtype)
        layer = GATE_LAYERS[name]
        rows, lengths = grouping(GATE_ROWS, num_groups)
        plan = plan_wstat_twin(*stand_in_call(lengths, num_models, dtype=dtype, **layer), cfg,
                               ieee=ieee)
        precision = " IEEE" if ieee else " TF32" if dtype == torch.float32 else ""
        return Variant(
            kernel="wstat twin",
            case=f"{str(dtype).removeprefix('torch.')}{precision} M={num_models}, "
                 f"K={layer['k_dim']} N={layer['n_dim']}, {rows}",
            fn=plan.kernel, args=plan.args, kwargs=plan.kwargs, config=cfg.name,
            tiles=f"N={cfg.block_n} T={cfg.block_t} K={cfg.block_k} w={cfg.num_warps} s=1",
            checks=(*DEFAULT_CHECKS, "wait"), core=core,
            allow={"wait": _GATE_NO_OVERLAP, **(allow or {})})

    for cfg in WSTAT_CONFIGS:
        yield variant(cfg.name, torch.bfloat16, 2, 1)
        yield variant(cfg.name, torch.float16, 8, 3)
    yield variant("ws128", torch.float32, 2, 1, ieee=True, core=False,
                  allow={"wgmma": _GATE_FMA})
    yield variant("ws128", torch.float32, 2, 1, core=False)
