"""Plain-Triton twin of the Gluon swap-AB register-combine kernel (``swapab_gluon``).

Same tiling (BLOCK_N weight rows x SLOTS slots of SLOT_T x rows per program), same
program order (``common.tile_coords``), same slots (``schedule.slot_span``), same
operand roles: the interpolated weight tile W_c = sum_i c_i W_i, combined in fp32, is
the A operand and x^T the B operand, so the program computes y^T for its slots. Same loop
order and group de-duplication: k-steps outside, slots inside; each k-step's weight tiles
are combined once per distinct group (``NCOMB`` combined tiles: one for a single-group
call, else one per slot), and a slot that continues the previous slot's group reuses its
combined tile. What differs is only what Triton cannot express without Gluon: no TMA
ring, no loader warp, no asynchronous MMA.

It exists so that the schedule and the arithmetic of the Gluon kernel are tested on the
CPU: Gluon kernels do not run under ``TRITON_INTERPRET=1``, this one does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import bias_args, dot, tile_coords
from .fused_configs import SwapABConfig
from .planned import PlannedLaunch
from .schedule import call_schedule, slot_span


@triton.jit
def _replace(items, index: tl.constexpr, value):
    """The tuple ``items`` with element ``index`` replaced (tuples are immutable)."""
    out = ()
    for j in tl.static_range(len(items)):
        if j == index:
            out = out + (value,)
        else:
            out = out + (items[j],)
    return out


@triton.jit
def _swapab_twin_kernel(
    x_ptr, w_ptr, b_ptr, c_ptr, y_ptr,
    slot_group_ptr, slot_row_ptr, offsets_ptr,
    num_tiles, N, K,
    stride_xt, stride_xk,
    stride_wm, stride_wn, stride_wk,
    stride_bm, stride_bn,
    stride_cg, stride_cm,
    stride_yt, stride_yn,
    M: tl.constexpr,
    SLOTS: tl.constexpr,
    SLOT_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_T: tl.constexpr,
    SINGLE_GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
):
    tile, n_tile = tile_coords(tl.program_id(0), num_tiles, tl.cdiv(N, BLOCK_N), GROUP_T)
    if not SINGLE_GROUP:
        # Spare tiles (the grid is an upper bound, no host sync) end here, as in Gluon.
        if tl.load(slot_group_ptr + tile * SLOTS) < 0:
            return
    offs_n = n_tile.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    n_mask = offs_n < N
    dtype = x_ptr.dtype.element_ty
    # One combined operand per distinct group, as in Gluon: one for a single-group call.
    NCOMB: tl.constexpr = 1 if SINGLE_GROUP else SLOTS
    groups = ()
    firsts = ()
    ends = ()
    c_rows = ()
    accs = ()
    for s in tl.static_range(SLOTS):
        group, first, end = slot_span(slot_group_ptr, slot_row_ptr, offsets_ptr, tile, s,
                                      SLOTS, SLOT_T, SINGLE_GROUP)
        groups = groups + (group,)
        firsts = firsts + (first,)
        ends = ends + (end,)
        c_rows = c_rows + (c_ptr + tl.maximum(group, 0).to(tl.int64) * stride_cg,)
        accs = accs + (tl.zeros((BLOCK_N, SLOT_T), dtype=tl.float32),)  # y^T of the slot

    # k-steps outside, slots inside (Gluon's order): each k-step's weight tiles are
    # combined once per distinct group and shared by the slots of that group.
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = offs_k < K
        w_offs = offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
        w_mask = n_mask[:, None] & k_mask[None, :]
        combs = ()
        for _s in tl.static_range(NCOMB):
            combs = combs + (tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32),)
        for i in range(M):
            w_i = tl.load(w_ptr + i * stride_wm + w_offs, mask=w_mask, other=0.0).to(tl.float32)
            for s in tl.static_range(NCOMB):
                comb = combs[s]
                if s == 0:
                    comb = comb + tl.load(c_rows[s] + i * stride_cm) * w_i
                elif groups[s] != groups[s - 1]:  # a slot continuing a group reuses its A
                    comb = comb + tl.load(c_rows[s] + i * stride_cm) * w_i
                combs = _replace(combs, s, comb)
        a_now = ()
        for s in tl.static_range(SLOTS):
            if s == 0:
                a = combs[0].to(dtype)
            elif NCOMB == 1:
                a = a_now[0]
            elif groups[s] != groups[s - 1]:
                a = combs[s].to(dtype)
            else:
                a = a_now[s - 1]
            a_now = a_now + (a,)
            offs_t = firsts[s].to(tl.int64) + tl.arange(0, SLOT_T).to(tl.int64)
            x_t = tl.load(  # x^T tile [BLOCK_K, SLOT_T]
                x_ptr + offs_t[None, :] * stride_xt + offs_k[:, None] * stride_xk,
                mask=(offs_t < ends[s])[None, :] & k_mask[:, None], other=0.0,
            )
            accs = _replace(accs, s, dot(a, x_t, accs[s], IEEE))

    for s in tl.static_range(SLOTS):
        acc = accs[s]
        if HAS_BIAS:
            bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for i in range(M):
                coeff = tl.load(c_rows[s] + i * stride_cm)
                b_i = tl.load(b_ptr + i * stride_bm + offs_n * stride_bn, mask=n_mask, other=0.0)
                bias += coeff * b_i.to(tl.float32)
            acc += bias[:, None]
        offs_t = firsts[s].to(tl.int64) + tl.arange(0, SLOT_T).to(tl.int64)
        y_ptrs = y_ptr + offs_t[None, :] * stride_yt + offs_n[:, None] * stride_yn
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty),
                 mask=n_mask[:, None] & (offs_t < ends[s])[None, :])


def swapab_twin_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    cfg: SwapABConfig,
    *,
    group_t: int = 8,
    ieee: bool = False,
) -> torch.Tensor:
    """Launch the twin into ``y`` ([T, N], any strides). Rows, N and K must be > 0."""
    plan_swapab_twin(x, weight, coeffs, offsets, bias, y, cfg, group_t=group_t,
                     ieee=ieee).run()
    return y


def plan_swapab_twin(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    cfg: SwapABConfig,
    *,
    group_t: int = 8,
    ieee: bool = False,
) -> PlannedLaunch:
    """The launch ``swapab_twin_matmul`` makes (CPU tensors too: the compile gate's way)."""
    slot_t, slots, block_n, block_k = cfg.slot_t, cfg.slots, cfg.block_n, cfg.block_k
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    sched = call_schedule(offsets, num_rows, coeffs.shape[0], slot_t, slots)
    num_tiles, slot_group, slot_row = sched.num_tiles, sched.slot_group, sched.slot_row
    bias_arg, stride_bm, stride_bn = bias_args(bias, weight)
    grid = (num_tiles * triton.cdiv(n_dim, block_n),)
    args = (x, weight, bias_arg, coeffs, y, slot_group, slot_row, offsets,
            num_tiles, n_dim, k_dim,
            x.stride(0), x.stride(1),
            weight.stride(0), weight.stride(1), weight.stride(2),
            stride_bm, stride_bn,
            coeffs.stride(0), coeffs.stride(1),
            y.stride(0), y.stride(1))
    kwargs = dict(M=num_models, SLOTS=slots, SLOT_T=slot_t, BLOCK_N=block_n, BLOCK_K=block_k,
                  GROUP_T=group_t, SINGLE_GROUP=coeffs.shape[0] == 1,
                  HAS_BIAS=bias is not None, IEEE=ieee, num_warps=cfg.num_warps, num_stages=1)
    return PlannedLaunch(_swapab_twin_kernel, grid, args, kwargs)


# ------------------------------------------------------------------------ compile gate

# Why the gate allows what the twin does not do: it is a correctness twin, not a fast kernel.
_GATE_NO_OVERLAP = ("the twin has no asynchronous MMA (no TMA ring, num_stages=1): each "
                    "k-step's dot waits for the last by design. It runs on a GPU only where "
                    "the Gluon kernel cannot (or is not enabled: DAWIN_FAST_GLUON), as "
                    "strategy 'swapab''s fallback; the default rule never picks it there")
_GATE_FMA = ("fp32 with IEEE precision (F.linear's default) runs its dot on CUDA cores by "
             "design; TF32 (allow_tf32) takes wgmma")


_GATE_TWIN_SPILL = ("pack2x64 spills 8 B at M = 32 on sm_80 and sm_89 (Triton 3.8): the measured "
                    "dispatch does not time it off Hopper (fused_configs."
                    "TWIN_SPILLS_OFF_HOPPER); only an explicit strategy='swapab' may run it")
_GATE_FP32_SPILL = ("sm_80 (Triton 3.8): 32 B of spills with fp32 IEEE and several groups (ptxas "
                    "stops at 128 registers there), which reaches the twin only through an "
                    "explicit strategy='swapab' (the dispatch sends it fp32 never); none on "
                    "sm_90a or sm_89")


def compile_variants():
    """The compile gate's variants of the twin, as ``dispatch.launch`` runs it on a GPU
    (``plan_swapab_twin`` with ``fused_configs.twin_config``'s tiles): every swap-AB config
    for fp16/bf16 at M = 2, 3, 8 and 32 in the groupings the Gluon kernel's variants use,
    and fp32 (IEEE and TF32, ``TWIN_FP32``'s tiles) at M = 2."""
    from .fused_configs import SWAPAB_CONFIGS, TWIN_SPILLS_OFF_HOPPER, twin_config
    from .gate_spec import DEFAULT_CHECKS, Variant, grouping, stand_in_call
    from .swapab_gluon import GATE_GROUPS, GATE_LAYER, GATE_ROWS

    def variant(name, dtype, num_models, num_groups, ieee=False, core=True, allow=None,
                allow_off_hopper=None):
        cfg = twin_config(name, dtype)
        rows, lengths = grouping(GATE_ROWS, num_groups)
        plan = plan_swapab_twin(*stand_in_call(lengths, num_models, dtype=dtype, **GATE_LAYER),
                                cfg, ieee=ieee)
        precision = " IEEE" if ieee else " TF32" if dtype == torch.float32 else ""
        return Variant(
            kernel="swapab twin",
            case=f"{str(dtype).removeprefix('torch.')}{precision} M={num_models}, {rows}",
            fn=plan.kernel, args=plan.args, kwargs=plan.kwargs, config=cfg.name,
            tiles=f"N={cfg.block_n} K={cfg.block_k} T={cfg.slots}x{cfg.slot_t} "
                  f"w={cfg.num_warps} s=1",
            checks=(*DEFAULT_CHECKS, "wait"), core=core,
            allow={"wait": _GATE_NO_OVERLAP, **(allow or {})},
            allow_off_hopper={**({"spill": _GATE_TWIN_SPILL} if name in TWIN_SPILLS_OFF_HOPPER
                                 else {}), **(allow_off_hopper or {})})

    for cfg in SWAPAB_CONFIGS:
        for dtype, num_models in ((torch.bfloat16, 2), (torch.bfloat16, 3), (torch.float16, 8),
                                  (torch.bfloat16, 32)):
            yield variant(cfg.name, dtype, num_models, GATE_GROUPS[cfg.name])
    for num_groups in (1, 80):
        yield variant("w8t256", torch.float32, 2, num_groups, ieee=True, core=False,
                      allow={"wgmma": _GATE_FMA}, allow_off_hopper={"spill": _GATE_FP32_SPILL})
        yield variant("w8t256", torch.float32, 2, num_groups, core=False)
