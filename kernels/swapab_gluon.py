"""Swap-AB register-combine kernel for Hopper, in Gluon (``triton.experimental.gluon``).

Computes y^T = W_c x^T per slot of rows (``schedule``), W_c = sum_i c_g,i W_i:

* a 1-warp loader partition (``gl.warp_specialize``) streams each k-step's M weight tiles
  [BLOCK_N, BLOCK_K] through a ``W_STAGES``-deep ring and the slots' x tiles
  [SLOT_T, BLOCK_K] through an ``X_STAGES``-deep ring, all by TMA (cp.async.bulk.tensor)
  with mbarrier handshakes. The weight ring holds single tiles, not a k-step's M tiles,
  so its depth does not grow with M: shared memory fits any M up to 32.
* the consumer (default partition, 4 or 8 warps) reads each weight tile with ldmatrix straight
  into wgmma's register A-operand layout (``DotOperandLayout`` of the wgmma layout),
  accumulates sum_i c_i W_i there in fp32, casts to x's dtype and issues an asynchronous
  wgmma per slot with x^T from shared memory as the B operand. It retires each k-step's
  wgmmas before the next k-step's combine (wait depth 0): ptxas reuses the registers
  of a register-A wgmma right after its issue (the gate's ``a_hazard`` check, SASS).
* slots of a tile that continue the previous slot's group reuse its combined operand.
* epilogue: + sum_i c_i b_i, cast to x's dtype, masked store of y (rows of the slot's
  own group only).

Gluon kernels do not run under the Triton interpreter: ``swapab_twin`` is the
interpreter-tested twin with the same tiling and schedule. Written to compile for sm_90a
on Triton 3.6 and 3.8 (their Gluon APIs agree on everything used here; see
``kernels/compiled.md`` for the compiled properties on each).
"""

from __future__ import annotations

import torch
import triton

from .common import bias_args, tile_coords, tma_layout_reason
from .fused_configs import SwapABConfig
from .gluon_api import (
    GL_DTYPES,
    GLUON_AVAILABLE,
    TensorDescriptor,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from .planned import PlannedLaunch
from .schedule import call_schedule, slot_span

#: the loader only issues TMA and waits on barriers
LOADER_REGS = gl.constexpr(40) if GLUON_AVAILABLE else None


if GLUON_AVAILABLE:

    @gluon.constexpr_function
    def _store_layout(block_n, slot_t, num_warps):
        """Blocked layout of a y^T tile [block_n, slot_t] for storing y: 8 consecutive n
        per thread (16 bytes), lanes along n first, then along t; warps along t."""
        lanes_n = min(32, max(block_n // 8, 1))
        return gl.BlockedLayout([8, 1], [lanes_n, 32 // lanes_n], [1, num_warps], [0, 1])

    @gluon.jit
    def _replace(items, index: gl.constexpr, value):
        """The tuple ``items`` with element ``index`` replaced (tuples are immutable)."""
        out = ()
        for j in gl.static_range(len(items)):
            if j == index:
                out = out + (value,)
            else:
                out = out + (items[j],)
        return out

    @gluon.jit
    def _swapab_loader(
        w_desc, x_desc, w_bufs, x_bufs, w_ready, w_empty, x_ready, x_empty,
        slot_group_ptr, slot_row_ptr, offsets_ptr, tile, n0, N, K,
        M: gl.constexpr, SLOTS: gl.constexpr, SLOT_T: gl.constexpr, BLOCK_K: gl.constexpr,
        SINGLE_GROUP: gl.constexpr,
    ):
        W_STAGES: gl.constexpr = w_bufs.type.shape[0]
        X_STAGES: gl.constexpr = x_ready.type.shape[0]
        firsts = ()
        for s in gl.static_range(SLOTS):
            _, first, _ = slot_span(slot_group_ptr, slot_row_ptr, offsets_ptr, tile, s,
                                    SLOTS, SLOT_T, SINGLE_GROUP)
            firsts = firsts + (first,)
        for kt in range(gl.cdiv(K, BLOCK_K)):
            xs = kt % X_STAGES
            # Ring slots start free: wait on the parity before the first completion.
            mbarrier.wait(x_empty.index(xs), ((kt // X_STAGES) & 1) ^ 1)
            mbarrier.expect(x_ready.index(xs), SLOTS * x_desc.block_type.nbytes)
            for s in gl.static_range(SLOTS):
                tma.async_copy_global_to_shared(x_desc, [firsts[s], kt * BLOCK_K],
                                                x_ready.index(xs), x_bufs.index(xs * SLOTS + s))
            for i in range(M):
                it = kt * M + i
                ws = it % W_STAGES
                mbarrier.wait(w_empty.index(ws), ((it // W_STAGES) & 1) ^ 1)
                mbarrier.expect(w_ready.index(ws), w_desc.block_type.nbytes)
                # Weight viewed as [M*N, K]: rows past N of model i belong to model i+1 and
                # only feed output rows >= N, which are never stored.
                tma.async_copy_global_to_shared(w_desc, [i * N + n0, kt * BLOCK_K],
                                                w_ready.index(ws), w_bufs.index(ws))

    @gluon.jit
    def _retire(accs, SLOTS: gl.constexpr):
        """Wait until no wgmma is in flight; the accumulators as a tuple (one per slot)."""
        if SLOTS == 1:  # warpgroup_mma_wait returns a lone dependency untupled
            return (warpgroup_mma_wait(num_outstanding=0, deps=accs),)
        else:
            return warpgroup_mma_wait(num_outstanding=0, deps=accs)

    @gluon.jit
    def _slot_bias(b_ptr, c_row, offs_n, N, stride_bm, stride_bn, stride_cm, M: gl.constexpr):
        """sum_i c_i b_i[offs_n] in fp32, in offs_n's layout."""
        bias = offs_n.to(gl.float32) * 0.0  # zeros in offs_n's layout (3.6 and 3.8 alike)
        for i in range(M):
            b_i = gl.load(b_ptr + i * stride_bm + offs_n * stride_bn, mask=offs_n < N, other=0.0)
            bias += gl.load(c_row + i * stride_cm) * b_i.to(gl.float32)
        return bias

    @gluon.jit
    def _swapab_kstep(
        kt, accs, w_bufs, x_bufs, w_ready, w_empty, x_ready, groups, c_rows, stride_cm,
        M: gl.constexpr, SLOTS: gl.constexpr, NCOMB: gl.constexpr, BLOCK_N: gl.constexpr,
        BLOCK_K: gl.constexpr, a_layout: gl.constexpr, USE_ACC: gl.constexpr,
    ):
        """One k-step of the consumer: combine the M weight tiles into each distinct group's
        A operand (fp32 in the operand layout), cast every slot's A, then issue one async
        wgmma per slot, back to back. Returns the accumulators (in flight): the caller
        retires them before anything else runs (see ``_swapab_consumer``)."""
        W_STAGES: gl.constexpr = w_bufs.type.shape[0]
        X_STAGES: gl.constexpr = x_ready.type.shape[0]
        SLOT_T: gl.constexpr = x_bufs.type.shape[1]
        dtype: gl.constexpr = w_bufs.dtype
        mma_layout: gl.constexpr = a_layout.parent
        combs = ()
        for _s in gl.static_range(NCOMB):
            combs = combs + (gl.zeros([BLOCK_N, BLOCK_K], gl.float32, a_layout),)
        for i in range(M):
            it = kt * M + i
            ws = it % W_STAGES
            coeffs = ()
            for s in gl.static_range(NCOMB):  # issued before the wait: latency hidden
                coeffs = coeffs + (gl.load(c_rows[s] + i * stride_cm),)
            mbarrier.wait(w_ready.index(ws), (it // W_STAGES) & 1)
            w = w_bufs.index(ws).load(a_layout).to(gl.float32)  # ldmatrix
            # Order the generic-proxy read before the loader's next TMA write.
            fence_async_shared()
            mbarrier.arrive(w_empty.index(ws), count=1)
            for s in gl.static_range(NCOMB):
                comb = combs[s]
                if s == 0:
                    comb = comb + coeffs[s] * w
                elif groups[s] != groups[s - 1]:  # a slot continuing a group reuses its A
                    comb = comb + coeffs[s] * w
                combs = _replace(combs, s, comb)

        # Every slot's A is cast before the first wgmma issues: a cast between two slots'
        # wgmmas may land in the registers of the wgmma just issued (seen in SASS, 3.6 and
        # 3.8, multi-slot configs: one instruction after the issue).
        a_now = ()
        for s in gl.static_range(SLOTS):
            if s == 0:
                a = combs[0].to(dtype)
            elif NCOMB == 1:
                a = a_now[0]
            elif groups[s] != groups[s - 1]:
                a = combs[s].to(dtype)
            else:
                a = a_now[s - 1]
            a_now = a_now + (a,)
        xs = kt % X_STAGES
        mbarrier.wait(x_ready.index(xs), (kt // X_STAGES) & 1)
        out = ()
        for s in gl.static_range(SLOTS):
            a = a_now[s]
            x_t = x_bufs.index(xs * SLOTS + s).permute((1, 0))  # x^T: [BLOCK_K, SLOT_T]
            if USE_ACC:
                acc = warpgroup_mma(a, x_t, accs[s], is_async=True)
            else:
                acc = warpgroup_mma(a, x_t, gl.zeros([BLOCK_N, SLOT_T], gl.float32, mma_layout),
                                    use_acc=False, is_async=True)
            out = out + (acc,)
        return out

    @gluon.jit
    def _swapab_consumer(
        w_bufs, x_bufs, w_ready, w_empty, x_ready, x_empty,
        b_ptr, c_ptr, y_ptr, slot_group_ptr, slot_row_ptr, offsets_ptr,
        tile, n0, N, K,
        stride_bm, stride_bn, stride_cg, stride_cm, stride_yt, stride_yn,
        M: gl.constexpr, SLOTS: gl.constexpr, SLOT_T: gl.constexpr,
        BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
        SINGLE_GROUP: gl.constexpr, HAS_BIAS: gl.constexpr, num_warps: gl.constexpr,
    ):
        X_STAGES: gl.constexpr = x_ready.type.shape[0]
        # wgmma: instruction m64 x n(SLOT_T) x k16, the warps stacked along the weight rows
        # (8 warps: two warp groups, each its own 64-row half of every 128 rows).
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, SLOT_T, 16])
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout,
                                                     k_width=2)
        # One combined operand per distinct group: one for a single-group call.
        NCOMB: gl.constexpr = 1 if SINGLE_GROUP else SLOTS

        groups = ()
        firsts = ()
        ends = ()
        c_rows = ()
        for s in gl.static_range(SLOTS):
            group, first, end = slot_span(slot_group_ptr, slot_row_ptr, offsets_ptr, tile, s,
                                          SLOTS, SLOT_T, SINGLE_GROUP)
            groups = groups + (group,)
            firsts = firsts + (first,)
            ends = ends + (end,)
            c_rows = c_rows + (c_ptr + gl.maximum(group, 0).to(gl.int64) * stride_cg,)

        # The interpolated bias sum_i c_i b_i of a one-slot tile is computed before the main
        # loop (2 registers to keep): in the epilogue, the M loads of the loop over models
        # (unrolled by LLVM) spilled next to the accumulators (M = 32, w8t256). Multi-slot
        # tiles compute it in the epilogue: keeping SLOTS vectors through the loop spilled
        # (w8pack4x64, M = 32). Both seen in ptxas -v, 3.6 and 3.8.
        n_bias = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma_layout))
        EARLY_BIAS: gl.constexpr = SLOTS == 1
        bias0 = gl.zeros([BLOCK_N], gl.float32, gl.SliceLayout(1, mma_layout))
        if HAS_BIAS and EARLY_BIAS:
            bias0 = _slot_bias(b_ptr, c_rows[0], n_bias, N, stride_bm, stride_bn, stride_cm, M)

        # The first k-step is peeled (use_acc=False): with zero-initialised accumulators
        # entering the loop, ptxas serialized every wgmma (C7515, "non wgmma instructions
        # defining accumulator registers") once the epilogue staged the tile through shared
        # memory (3.8, SLOTS >= 4 and SLOT_T = 256).
        #
        # Every k-step's wgmmas are retired (wait depth 0) before the next instruction that
        # writes a register: their A operand lives in registers, which wgmma reads
        # asynchronously, and ptxas reuses them as soon as the wgmma has issued (the wait's
        # ``deps`` only order LLVM values: in the PTX they sit in a comment, so ptxas sees
        # no use of the packed A registers after the issue). Keeping one k-step in flight
        # (depth 1) would let the next k-step's ldmatrix and FMAs overwrite the A of a
        # pending wgmma: undefined results (triton-lang/triton#9433; the compile gate's
        # ``a_hazard`` check, SASS, 3.6 and 3.8). The TMA loader still runs ahead; the
        # combine does not overlap the MMAs (predicted cost: kernels/README.md, "swapab").
        accs = _swapab_kstep(
            0, (), w_bufs, x_bufs, w_ready, w_empty, x_ready, groups, c_rows, stride_cm,
            M, SLOTS, NCOMB, BLOCK_N, BLOCK_K, a_layout, False)
        waited = _retire(accs, SLOTS)
        mbarrier.arrive(x_empty.index(0), count=1)
        for kt in range(1, gl.cdiv(K, BLOCK_K)):
            accs = ()
            for s in gl.static_range(SLOTS):
                accs = accs + (waited[s],)
            accs = _swapab_kstep(
                kt, accs, w_bufs, x_bufs, w_ready, w_empty, x_ready, groups, c_rows, stride_cm,
                M, SLOTS, NCOMB, BLOCK_N, BLOCK_K, a_layout, True)
            waited = _retire(accs, SLOTS)
            mbarrier.arrive(x_empty.index(kt % X_STAGES), count=1)

        # Bias and cast in the wgmma layout, then one shuffle through shared memory to a
        # layout where each thread writes 8 consecutive outputs of one row of y: coalesced
        # stores, and 64-bit row addresses for few rows per thread (per-element addresses in
        # the wgmma layout spilled at SLOT_T = 256).
        out_layout: gl.constexpr = _store_layout(BLOCK_N, SLOT_T, num_warps)
        offs_n = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, out_layout))
        n_mask = offs_n < N
        for s in gl.static_range(SLOTS):
            acc = waited[s]
            if HAS_BIAS:
                if EARLY_BIAS:
                    acc = acc + bias0[:, None]
                else:
                    bias = _slot_bias(b_ptr, c_rows[s], n_bias, N, stride_bm, stride_bn,
                                      stride_cm, M)
                    acc = acc + bias[:, None]
            out = gl.convert_layout(acc.to(y_ptr.dtype.element_ty), out_layout)
            offs_t = firsts[s].to(gl.int64) + gl.arange(
                0, SLOT_T, layout=gl.SliceLayout(0, out_layout)).to(gl.int64)
            ptrs = y_ptr + offs_t[None, :] * stride_yt + offs_n[:, None].to(gl.int64) * stride_yn
            mask = n_mask[:, None] & (offs_t < ends[s])[None, :]
            gl.store(ptrs, out, mask=mask)

    @gluon.jit
    def _swapab_gluon_kernel(
        w_desc, x_desc, b_ptr, c_ptr, y_ptr,
        slot_group_ptr, slot_row_ptr, offsets_ptr,
        num_tiles, N, K,
        stride_bm, stride_bn, stride_cg, stride_cm, stride_yt, stride_yn,
        M: gl.constexpr, SLOTS: gl.constexpr, SLOT_T: gl.constexpr,
        BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
        W_STAGES: gl.constexpr, X_STAGES: gl.constexpr, GROUP_T: gl.constexpr,
        SINGLE_GROUP: gl.constexpr, HAS_BIAS: gl.constexpr, num_warps: gl.constexpr,
    ):
        tile, n_tile = tile_coords(gl.program_id(0), num_tiles, gl.cdiv(N, BLOCK_N), GROUP_T)
        if not SINGLE_GROUP:
            # Spare tiles (the grid is an upper bound, no host sync) end here.
            if gl.load(slot_group_ptr + tile * SLOTS) < 0:
                return
        n0 = n_tile * BLOCK_N
        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [W_STAGES, BLOCK_N, BLOCK_K],
                                           w_desc.layout)
        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [X_STAGES * SLOTS, SLOT_T, BLOCK_K],
                                           x_desc.layout)
        w_ready = gl.allocate_shared_memory(gl.int64, [W_STAGES, 1], mbarrier.MBarrierLayout())
        w_empty = gl.allocate_shared_memory(gl.int64, [W_STAGES, 1], mbarrier.MBarrierLayout())
        x_ready = gl.allocate_shared_memory(gl.int64, [X_STAGES, 1], mbarrier.MBarrierLayout())
        x_empty = gl.allocate_shared_memory(gl.int64, [X_STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(W_STAGES):
            mbarrier.init(w_ready.index(i), count=1)
            mbarrier.init(w_empty.index(i), count=1)
        for i in gl.static_range(X_STAGES):
            mbarrier.init(x_ready.index(i), count=1)
            mbarrier.init(x_empty.index(i), count=1)
        # Default partition first (it returns nothing: on Triton 3.6 a default partition
        # returning a tensor failed to compile), then the 1-warp TMA loader.
        gl.warp_specialize([
            (_swapab_consumer, (
                w_bufs, x_bufs, w_ready, w_empty, x_ready, x_empty,
                b_ptr, c_ptr, y_ptr, slot_group_ptr, slot_row_ptr, offsets_ptr,
                tile, n0, N, K,
                stride_bm, stride_bn, stride_cg, stride_cm, stride_yt, stride_yn,
                M, SLOTS, SLOT_T, BLOCK_N, BLOCK_K, SINGLE_GROUP, HAS_BIAS, num_warps)),
            (_swapab_loader, (
                w_desc, x_desc, w_bufs, x_bufs, w_ready, w_empty, x_ready, x_empty,
                slot_group_ptr, slot_row_ptr, offsets_ptr, tile, n0, N, K,
                M, SLOTS, SLOT_T, BLOCK_K, SINGLE_GROUP)),
        ], [1], [LOADER_REGS])


def tma_compatible(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """None if TMA descriptors can address x [T, K] and weight as [M*N, K], else why not."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {x.dtype} (the kernel runs fp16/bf16 wgmma)"
    return tma_layout_reason(x, weight)


def swapab_gluon_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    cfg: SwapABConfig,
    *,
    group_t: int = 8,
) -> torch.Tensor:
    """Launch the Gluon kernel into ``y`` ([T, N], any strides); CUDA fp16/bf16 only.

    Callers check ``tma_compatible`` first. Rows, N and K must be > 0.
    """
    plan_swapab_gluon(x, weight, coeffs, offsets, bias, y, cfg, group_t=group_t).run()
    return y


def plan_swapab_gluon(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    cfg: SwapABConfig,
    *,
    group_t: int = 8,
) -> PlannedLaunch:
    """The launch ``swapab_gluon_matmul`` makes (schedule, TMA descriptors, every argument).

    Works on CPU tensors too: the compile gate plans real calls this way.
    """
    slot_t, slots, block_n, block_k = cfg.slot_t, cfg.slots, cfg.block_n, cfg.block_k
    if not GLUON_AVAILABLE:
        raise RuntimeError("swapab_gluon needs triton.experimental.gluon (Triton >= 3.5)")
    if cfg.x_stages < 2:  # with one stage the loader could never run ahead of the MMAs
        raise ValueError(f"swapab_gluon: config {cfg.name} needs x_stages >= 2")
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    gl_dtype = GL_DTYPES[x.dtype]
    w_layout = gl.NVMMASharedLayout.get_default_for([block_n, block_k], gl_dtype)
    x_layout = gl.NVMMASharedLayout.get_default_for([slot_t, block_k], gl_dtype)
    w2d = weight.as_strided((num_models * n_dim, k_dim), (weight.stride(1), 1))
    w_desc = TensorDescriptor(w2d, list(w2d.shape), list(w2d.stride()), [block_n, block_k],
                              w_layout)
    x_desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [slot_t, block_k], x_layout)
    sched = call_schedule(offsets, num_rows, coeffs.shape[0], slot_t, slots)
    num_tiles, slot_group, slot_row = sched.num_tiles, sched.slot_group, sched.slot_row
    bias_arg, stride_bm, stride_bn = bias_args(bias, weight)
    grid = (num_tiles * triton.cdiv(n_dim, block_n),)
    args = (w_desc, x_desc, bias_arg, coeffs, y, slot_group, slot_row, offsets,
            num_tiles, n_dim, k_dim,
            stride_bm, stride_bn, coeffs.stride(0), coeffs.stride(1),
            y.stride(0), y.stride(1))
    kwargs = dict(
        M=num_models, SLOTS=slots, SLOT_T=slot_t, BLOCK_N=block_n, BLOCK_K=block_k,
        W_STAGES=cfg.w_stages, X_STAGES=cfg.x_stages, GROUP_T=group_t,
        SINGLE_GROUP=coeffs.shape[0] == 1, HAS_BIAS=bias is not None,
        num_warps=cfg.num_warps, maxnreg=cfg.maxnreg,
    )
    return PlannedLaunch(_swapab_gluon_kernel, grid, args, kwargs)


# ------------------------------------------------------------------------ compile gate

# The calls the compile gate builds (``gate_spec``): 4096 rows of a ViT-B/32 MLP layer
# (K = 768, N = 3072) in groups of the lengths the traffic model gives each config (one
# group; 33-64 rows; 17-32; <= 16), every config, fp16 and bf16, M from 1 to 32 (M = 3:
# LLVM unrolls short model loops fully, and w8pack4x64 once spilled at M = 3 only).
GATE_ROWS = 4096
WAIT_ZERO_REASON = (
    "register-A wgmma: each k-step's wgmmas are retired before the next k-step writes a "
    "register, since ptxas reuses A's registers right after the issue (a_hazard; "
    "triton-lang/triton#9433); the TMA loader still runs ahead")
GATE_LAYER = dict(n_dim=3072, k_dim=768)
GATE_GROUPS = {"w8t256": 1, "big128": 1, "w8pack4x64": 80, "pack2x64": 80, "pack4x32": 160,
               "pack8x16": 300}
GATE_MODELS = ((torch.bfloat16, 2), (torch.bfloat16, 3), (torch.float16, 8),
               (torch.float16, 16), (torch.bfloat16, 32))


def compile_variants():
    """The compile gate's variants of the Gluon kernel, planned by ``plan_swapab_gluon``:
    every config (``SWAPAB_CONFIGS``) at every (dtype, M) of ``GATE_MODELS``, plus one call
    without bias (M = 1) and a big-group config with many groups. Held to wgmma with a
    register A operand and no register-A hazard, TMA loads, and the shared-memory model
    (``gluon_smem_bytes``, up to ``GLUON_SMEM_SLACK`` below the compiled size); its
    main-loop wait depth is 0 by design (``WAIT_ZERO_REASON``)."""
    if not GLUON_AVAILABLE:
        return
    from .fused_configs import GLUON_SMEM_SLACK, SWAPAB_CONFIGS, gluon_smem_bytes
    from .gate_spec import DEFAULT_CHECKS, Variant, grouping, stand_in_call

    def variant(cfg, dtype, num_models, num_groups, bias=True):
        name, lengths = grouping(GATE_ROWS, num_groups)
        call = stand_in_call(lengths, num_models, dtype=dtype, bias=bias, **GATE_LAYER)
        plan = plan_swapab_gluon(*call, cfg)
        elem = call[0].element_size()
        return Variant(
            kernel="swapab (Gluon)",
            case=f"{str(dtype).removeprefix('torch.')} M={num_models}, {name}"
                 + ("" if bias else ", no bias"),
            fn=plan.kernel, args=plan.args, kwargs=plan.kwargs, config=cfg.name,
            tiles=f"N={cfg.block_n} K={cfg.block_k} T={cfg.slots}x{cfg.slot_t} "
                  f"w={cfg.num_warps}+1 ring={cfg.w_stages}/{cfg.x_stages}",
            checks=(*DEFAULT_CHECKS, "wait", "a_regs", "tma"),
            allow={"wait": WAIT_ZERO_REASON},
            shared_model=lambda _config: gluon_smem_bytes(cfg, elem),
            shared_slack=GLUON_SMEM_SLACK)

    for cfg in SWAPAB_CONFIGS:
        for dtype, num_models in GATE_MODELS:
            yield variant(cfg, dtype, num_models, GATE_GROUPS[cfg.name])
    configs = {c.name: c for c in SWAPAB_CONFIGS}
    yield variant(configs["w8t256"], torch.bfloat16, 1, 1, bias=False)
    yield variant(configs["big128"], torch.bfloat16, 16, 64)
