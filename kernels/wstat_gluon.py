"""Weight-stationary kernel for large groups on Hopper, in Gluon.

Computes y^T = W_c x^T, W_c = sum_i c_g,i W_i, for a program's N tile and its run of rows
(``schedule``: runs of one group, ``fused_configs.wstat_run_rows`` rows long):

* **combine phase, once per program**: all its warps load the M weight tiles
  [BLOCK_N, BLOCK_K] of every K slice from global memory (the next model's tile in flight
  while the current one is combined), accumulate sum_i c_i W_i in fp32 and store the
  result, cast to x's dtype, into a resident shared-memory tile W_c[BLOCK_N, all K]
  (explicit ``gl.allocate_shared_memory``; K_TILES slices of [BLOCK_N, BLOCK_K]). The
  merged weight never exists in global memory; only this tile, in this SM's shared memory.
* **stream phase**: x tiles [BLOCK_T, BLOCK_K] arrive through a ``STAGES``-deep TMA ring
  (the first ones are issued before the combine phase, so they land during it); each is
  the B operand (x^T, permuted view) of an asynchronous wgmma whose A operand is the
  resident slice: **both operands in shared memory**, no register A operand, so the
  register-A hazard (a wgmma whose A registers are rewritten while it is in flight)
  cannot arise. One wgmma group stays in flight
  (``warpgroup_mma_wait(1)``); a ring stage is refilled only after the wgmma that read it
  has retired.
* epilogue per row block: + sum_i c_i b_i, cast, masked store of y straight from the
  accumulator layout (rows of the run's own group only). There is no shared memory left
  to stage it through: the resident tile takes 192 KB at K = 768.

The resident tile bounds K: ``fused_configs.wstat_fits`` (K <= 768 at BLOCK_N = 128,
K <= 1280 at 64); dispatch never picks the kernel where it does not fit.

Gluon kernels do not run under the Triton interpreter: ``wstat_twin`` is the
interpreter-tested twin with the same runs, program order, tiles and epilogue.
"""

from __future__ import annotations

import torch
import triton

from .common import bias_args, tma_layout_reason
from .fused_configs import WStatConfig, wstat_run_rows, wstat_smem_bytes
from .gluon_api import (
    GL_DTYPES,
    GLUON_AVAILABLE,
    TensorDescriptor,
    cta_barrier,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from .planned import PlannedLaunch
from .schedule import call_schedule

if GLUON_AVAILABLE:

    @gluon.constexpr_function
    def _combine_layout(block_n, block_k, num_warps):
        """Blocked layout of a weight tile [block_n, block_k]: 8 consecutive k per thread
        (16-byte loads), lanes along k first, warps along n."""
        lanes_k = min(32, max(block_k // 8, 1))
        return gl.BlockedLayout([1, 8], [32 // lanes_k, lanes_k], [num_warps, 1], [1, 0])

    @gluon.jit
    def _issue_x(x_desc, x_bufs, ready, j, first, K_TILES: gl.constexpr,
                 BLOCK_T: gl.constexpr, BLOCK_K: gl.constexpr):
        """TMA load of the run's j-th x tile (row block j // K_TILES, slice j % K_TILES)."""
        STAGES: gl.constexpr = x_bufs.type.shape[0]
        s = j % STAGES
        blk = j // K_TILES
        kt = j - blk * K_TILES
        mbarrier.expect(ready.index(s), x_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(x_desc, [first + blk * BLOCK_T, kt * BLOCK_K],
                                        ready.index(s), x_bufs.index(s))

    @gluon.jit
    def _wstat_kernel(
        x_desc, w_ptr, b_ptr, c_ptr, y_ptr,
        run_group_ptr, run_row_ptr, offsets_ptr,
        run_rows, N, K,
        stride_wm, stride_wn, stride_wk, stride_bm, stride_bn, stride_cg, stride_cm,
        stride_yt, stride_yn,
        M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_T: gl.constexpr,
        BLOCK_K: gl.constexpr, K_TILES: gl.constexpr, STAGES: gl.constexpr,
        SINGLE_GROUP: gl.constexpr, HAS_BIAS: gl.constexpr, num_warps: gl.constexpr,
    ):
        # Program order: N tiles fastest, so programs running together read the same x rows.
        n_tiles = gl.cdiv(N, BLOCK_N)
        pid = gl.program_id(0)
        run = pid // n_tiles
        n0 = (pid - run * n_tiles) * BLOCK_N
        if SINGLE_GROUP:
            group = run * 0
            first = run * run_rows
            group_end = gl.load(offsets_ptr + 1).to(gl.int32)
        else:
            group = gl.load(run_group_ptr + run)
            if group < 0:  # spare run (the grid is an upper bound, no host sync)
                return
            first = gl.load(run_row_ptr + run)
            group_end = gl.load(offsets_ptr + group + 1).to(gl.int32)
        end = gl.minimum(first + run_rows, group_end)
        total = gl.cdiv(end - first, BLOCK_T) * K_TILES  # x tiles of the run
        c_row = c_ptr + group.to(gl.int64) * stride_cg
        dtype: gl.constexpr = x_desc.dtype

        w_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], dtype)
        w_res = gl.allocate_shared_memory(dtype, [K_TILES, BLOCK_N, BLOCK_K], w_layout)
        x_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_T, BLOCK_K], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for st in gl.static_range(STAGES):
            mbarrier.init(ready.index(st), count=1)
        for jp in gl.static_range(STAGES):  # these land while the combine phase runs
            if jp < total:
                _issue_x(x_desc, x_bufs, ready, jp, first, K_TILES, BLOCK_T, BLOCK_K)

        # ---- combine phase: W_c[n0:n0+BLOCK_N, :] into the resident tile, once.
        cl: gl.constexpr = _combine_layout(BLOCK_N, BLOCK_K, num_warps)
        offs_wn = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, cl))
        offs_wk = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, cl))
        wn_mask = offs_wn < N
        w_rows = w_ptr + offs_wn.to(gl.int64)[:, None] * stride_wn
        for kt in range(K_TILES):
            k_idx = kt * BLOCK_K + offs_wk
            mask = wn_mask[:, None] & (k_idx < K)[None, :]
            ptrs = w_rows + k_idx.to(gl.int64)[None, :] * stride_wk
            comb = gl.zeros([BLOCK_N, BLOCK_K], gl.float32, cl)
            w = gl.load(ptrs, mask=mask, other=0.0)
            for i in range(M):
                # The next model's tile is in flight while this one is combined.
                nxt = gl.minimum(i + 1, M - 1)
                w_next = gl.load(ptrs + nxt.to(gl.int64) * stride_wm, mask=mask & (i + 1 < M),
                                 other=0.0)
                comb += gl.load(c_row + i * stride_cm) * w.to(gl.float32)
                w = w_next
            w_res.index(kt).store(comb.to(dtype))
        # Generic-proxy stores of every warp before any wgmma (async proxy) reads them.
        fence_async_shared()
        cta_barrier()

        # ---- stream phase: y^T[BLOCK_N, BLOCK_T] += W_c slice (smem) x x^T slice (smem).
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_T, 16])
        offs_n = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma_layout))
        n_mask = offs_n < N
        bias = gl.zeros([BLOCK_N], gl.float32, gl.SliceLayout(1, mma_layout))
        if HAS_BIAS:
            for i in range(M):
                b_i = gl.load(b_ptr + i * stride_bm + offs_n * stride_bn, mask=n_mask, other=0.0)
                bias += gl.load(c_row + i * stride_cm) * b_i.to(gl.float32)
        y_cols = y_ptr + offs_n.to(gl.int64)[:, None] * stride_yn
        for blk in range(gl.cdiv(end - first, BLOCK_T)):
            j0 = blk * K_TILES
            # First slice peeled (use_acc=False): no CUDA-core write defines the accumulator
            # registers inside the loop (ptxas serializes wgmma on that, C7515).
            mbarrier.wait(ready.index(j0 % STAGES), (j0 // STAGES) & 1)
            acc = warpgroup_mma(w_res.index(0), x_bufs.index(j0 % STAGES).permute((1, 0)),
                                gl.zeros([BLOCK_N, BLOCK_T], gl.float32, mma_layout),
                                use_acc=False, is_async=True)
            # Waits for nothing (one group in flight): gives the loop a plain tensor to carry.
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            for kt in range(1, K_TILES):
                j = j0 + kt
                stage = j % STAGES
                mbarrier.wait(ready.index(stage), (j // STAGES) & 1)
                acc = warpgroup_mma(w_res.index(kt), x_bufs.index(stage).permute((1, 0)), acc,
                                    is_async=True)
                # Retire tile j - 1 (tile j stays in flight); only then refill its stage.
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                if j - 1 + STAGES < total:
                    _issue_x(x_desc, x_bufs, ready, j - 1 + STAGES, first, K_TILES, BLOCK_T,
                             BLOCK_K)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            j_last = j0 + K_TILES - 1
            if j_last + STAGES < total:  # the next block's tile lands during the epilogue
                _issue_x(x_desc, x_bufs, ready, j_last + STAGES, first, K_TILES, BLOCK_T,
                         BLOCK_K)
            offs_t = (first + blk * BLOCK_T).to(gl.int64) + gl.arange(
                0, BLOCK_T, layout=gl.SliceLayout(0, mma_layout)).to(gl.int64)
            out = (acc + bias[:, None]).to(y_ptr.dtype.element_ty)
            mask = n_mask[:, None] & (offs_t < end)[None, :]
            gl.store(y_cols + offs_t[None, :] * stride_yt, out, mask=mask)
        for st in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(st))


def wstat_reason(x: torch.Tensor, weight: torch.Tensor, cfg: WStatConfig) -> str | None:
    """None if the Gluon kernel with ``cfg`` can run this call, else why not."""
    if not GLUON_AVAILABLE:
        return "this Triton has no Gluon (triton.experimental.gluon)"
    if x.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {x.dtype} (the kernel runs fp16/bf16 wgmma)"
    from .fused_configs import wstat_fits

    if not wstat_fits(cfg, x.shape[1], x.element_size()):
        return (f"K = {x.shape[1]}: the resident tile of config {cfg.name} needs "
                f"{wstat_smem_bytes(cfg, x.shape[1], x.element_size())} B of shared memory")
    if x.stride(1) != 1 or (x.stride(0) * x.element_size()) % 16 or x.data_ptr() % 16:
        return tma_layout_reason(x, weight)
    return None


def wstat_gluon_matmul(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
                       offsets: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                       cfg: WStatConfig) -> torch.Tensor:
    """Launch the Gluon kernel into ``y`` ([T, N], any strides); CUDA fp16/bf16 only.

    Callers check ``wstat_reason`` first. Rows, N and K must be > 0.
    """
    plan_wstat_gluon(x, weight, coeffs, offsets, bias, y, cfg).run()
    return y


def plan_wstat_gluon(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
                     offsets: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                     cfg: WStatConfig) -> PlannedLaunch:
    """The launch ``wstat_gluon_matmul`` makes (CPU tensors too: the compile gate's way)."""
    if not GLUON_AVAILABLE:
        raise RuntimeError("wstat_gluon needs triton.experimental.gluon (Triton >= 3.5)")
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    num_groups = coeffs.shape[0]
    x_layout = gl.NVMMASharedLayout.get_default_for([cfg.block_t, cfg.block_k],
                                                    GL_DTYPES[x.dtype])
    x_desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [cfg.block_t, cfg.block_k],
                              x_layout)
    run_rows = wstat_run_rows(num_rows, num_groups, n_dim, cfg)
    sched = call_schedule(offsets, num_rows, num_groups, run_rows, 1)
    bias_arg, stride_bm, stride_bn = bias_args(bias, weight)
    grid = (sched.num_tiles * triton.cdiv(n_dim, cfg.block_n),)
    args = (x_desc, weight, bias_arg, coeffs, y, sched.slot_group, sched.slot_row, offsets,
            run_rows, n_dim, k_dim,
            weight.stride(0), weight.stride(1), weight.stride(2), stride_bm, stride_bn,
            coeffs.stride(0), coeffs.stride(1), y.stride(0), y.stride(1))
    kwargs = dict(M=num_models, BLOCK_N=cfg.block_n, BLOCK_T=cfg.block_t,
                  BLOCK_K=cfg.block_k, K_TILES=triton.cdiv(k_dim, cfg.block_k),
                  STAGES=cfg.stages, SINGLE_GROUP=num_groups == 1,
                  HAS_BIAS=bias is not None, num_warps=cfg.num_warps, maxnreg=cfg.maxnreg)
    return PlannedLaunch(_wstat_kernel, grid, args, kwargs)


# ------------------------------------------------------------------------ compile gate

#: The gate's calls: one group of 4096 rows (and 3 clusters) of the layers each config
#: serves (ViT-B fc1/QKV: K = 768; ViT-L fc1/QKV: K = 1024), M from 1 to 32.
GATE_ROWS = 4096
GATE_LAYERS = {"ws128": dict(n_dim=3072, k_dim=768), "ws64": dict(n_dim=4096, k_dim=1024)}
GATE_MODELS = ((torch.bfloat16, 2), (torch.float16, 8), (torch.bfloat16, 32))


_GATE_BLOCK_WAIT = (
    "the K loop keeps one wgmma group in flight (wgmma.wait_group 1; the gate reads the "
    "row-block loop that contains it, as its most-wgmma loop); the wait_group 0 there is "
    "the one before each row block's epilogue, which needs the finished accumulator. Its "
    "cost is in the traffic model (WSTAT_EPILOGUE_CLK per row block)")


def compile_variants():
    """The compile gate's variants of the Gluon weight-stationary kernel: every config at
    its layer shape, bf16/fp16, M = 2, 8, 32, one group and 3 clusters, one call without
    bias (M = 1). Held to wgmma (both operands in shared memory: no register A, so no
    register-A hazard), main-loop wait depth >= 1, TMA loads, and its shared-memory model
    (``wstat_smem_bytes``, up to ``WSTAT_SMEM_SLACK`` below the compiled size)."""
    if not GLUON_AVAILABLE:
        return
    from .fused_configs import WSTAT_CONFIGS, WSTAT_SMEM_SLACK
    from .gate_spec import DEFAULT_CHECKS, Variant, grouping, stand_in_call

    def variant(cfg, dtype, num_models, num_groups, bias=True):
        layer = GATE_LAYERS[cfg.name]
        name, lengths = grouping(GATE_ROWS, num_groups)
        call = stand_in_call(lengths, num_models, dtype=dtype, bias=bias, **layer)
        plan = plan_wstat_gluon(*call, cfg)
        elem = call[0].element_size()
        return Variant(
            kernel="wstat (Gluon)",
            case=f"{str(dtype).removeprefix('torch.')} M={num_models}, K={layer['k_dim']} "
                 f"N={layer['n_dim']}, {name}" + ("" if bias else ", no bias"),
            fn=plan.kernel, args=plan.args, kwargs=plan.kwargs, config=cfg.name,
            tiles=f"N={cfg.block_n} T={cfg.block_t} K={cfg.block_k} w={cfg.num_warps} "
                  f"ring={cfg.stages} resident={plan.kwargs['K_TILES']}x{cfg.block_k}",
            checks=(*DEFAULT_CHECKS, "wait", "tma"), allow={"wait": _GATE_BLOCK_WAIT},
            shared_model=lambda _config: wstat_smem_bytes(cfg, layer["k_dim"], elem),
            shared_slack=WSTAT_SMEM_SLACK)

    for cfg in WSTAT_CONFIGS:
        for dtype, num_models in GATE_MODELS:
            yield variant(cfg, dtype, num_models, 1)
        yield variant(cfg, torch.bfloat16, 2, 3)
    yield variant(WSTAT_CONFIGS[0], torch.bfloat16, 1, 1, bias=False)
