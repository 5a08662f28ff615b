"""Launch configurations of the kernels chosen by rule, not autotuned: swap-AB (Gluon and
twin), epilogue-scaled and weight-stationary (Gluon and twin).

Plain data, chosen by a rule instead of run-time autotuning (which stalls the first call
and cannot run inside CUDA-graph capture). Every GPU config here is compiled for sm_90a
on Triton 3.6 and 3.8 by the compile gate (``kernel_tools.compile_gate``; the kernels' own
``compile_variants``), which holds it to: wgmma (register A operand for the Gluon
swap-AB kernel), main-loop wait depth >= 1, no spills, no ptxas serialization or warning,
shared memory within ``SMEM_LIMIT`` for M up to 32; the twin, which has no asynchronous
MMA, is allowed its wait depth 0 with that reason. None of them has been timed: the
choice between them follows the traffic model (``cost_model``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import arch
from .schedule import SMEM_LIMIT


@dataclass(frozen=True)
class SwapABConfig:
    """Tile of the swap-AB kernels: BLOCK_N weight rows x SLOTS slots of SLOT_T x rows.

    ``w_stages``/``x_stages``: depths of the Gluon kernel's TMA rings (single weight
    tiles, and a k-step's slot tiles); the twin ignores them.
    """

    name: str
    block_n: int
    block_k: int
    slot_t: int
    slots: int
    w_stages: int
    x_stages: int
    num_warps: int = 4

    @property
    def block_t(self) -> int:
        return self.slot_t * self.slots

    @property
    def maxnreg(self) -> int:
        """Registers per thread the Gluon kernel is compiled for.

        ptxas caps every partition's code at ``maxnreg`` (the consumer's setmaxnreg raise
        does not lift it): at 152, 4-warp configs spilled and SLOT_T = 256 was refused
        ("register target of 158 or higher"); no config spills at 232 (4 consumer warps)
        or 168 (8). The CTA has the consumer warps plus the loader's padded warp group:
        8 (12) warps * 32 * 232 (168) registers fit one CTA in 65 536. The default,
        256, is more than ptxas accepts (a warning, then ignored).
        """
        return 232 if self.num_warps == 4 else 168


@dataclass(frozen=True)
class EpilogueConfig:
    name: str
    block_m: int
    block_n: int
    block_k: int
    num_stages: int
    num_warps: int


# Registers per consumer thread (<= 232 or 168, see maxnreg): accumulators
# BLOCK_N * BLOCK_T / (32 * num_warps), combined operands SLOTS * BLOCK_N * BLOCK_K /
# (32 * num_warps) in fp32, one weight tile in flight. L2 -> SM traffic per output is
# (M * BLOCK_N + BLOCK_T) / (BLOCK_N * BLOCK_T): the wide 8-warp tiles halve it.
SWAPAB_CONFIGS = (
    # One group or long groups: 8 consumer warps (two warp groups), 256 rows per program.
    SwapABConfig("w8t256", block_n=128, block_k=32, slot_t=256, slots=1, w_stages=12,
                 x_stages=4, num_warps=8),
    # Same with 4 consumer warps (the Triton 3.6 prototype's 8-warp kernel was serialized).
    SwapABConfig("big128", block_n=128, block_k=32, slot_t=128, slots=1, w_stages=16,
                 x_stages=4),
    # Groups of 33-64 rows (ViT-B/32 per-sample: 50), 8 warps: four groups per program.
    SwapABConfig("w8pack4x64", block_n=128, block_k=16, slot_t=64, slots=4, w_stages=16,
                 x_stages=4, num_warps=8),
    # Groups of 33-64 rows (ViT-B/32 per-sample: 50): two groups per program.
    SwapABConfig("pack2x64", block_n=128, block_k=32, slot_t=64, slots=2, w_stages=10,
                 x_stages=3),
    # Groups of 17-32 rows, or longer groups aligned to 32 rows: four slots.
    SwapABConfig("pack4x32", block_n=64, block_k=32, slot_t=32, slots=4, w_stages=12,
                 x_stages=3),
    # Groups of <= 16 rows (e.g. per-token coefficients of short sequences): eight slots.
    SwapABConfig("pack8x16", block_n=64, block_k=16, slot_t=16, slots=8, w_stages=16,
                 x_stages=4),
)

EPILOGUE_CONFIGS = (
    EpilogueConfig("e128x128", block_m=128, block_n=128, block_k=64, num_stages=4,
                   num_warps=8),
    EpilogueConfig("e64x128", block_m=64, block_n=128, block_k=64, num_stages=4, num_warps=4),
    EpilogueConfig("e128x64", block_m=128, block_n=64, block_k=64, num_stages=4, num_warps=4),
)

# Interpreter: small tiles, so that small test shapes cross tile, slot and k boundaries.
INTERPRETER_SWAPAB = {
    name: SwapABConfig(name, block_n=32, block_k=16, slot_t=slot_t, slots=slots,
                       w_stages=1, x_stages=1)
    for name, slot_t, slots in (("w8t256", 64, 1), ("big128", 32, 1), ("w8pack4x64", 16, 4),
                                ("pack2x64", 16, 2), ("pack4x32", 8, 4), ("pack8x16", 8, 8))
}
INTERPRETER_EPILOGUE = EpilogueConfig("interp", block_m=16, block_n=32, block_k=16,
                                      num_stages=2, num_warps=4)


# fp32 on a GPU: only an explicit strategy="swapab" / "epilogue" gets here (the default
# rule never sends fp32 to these kernels, and the Gluon kernel has no fp32). The 16-bit
# tiles do not suit it (compiled for sm_90a, Triton 3.8, M = 2): the twin spilled 88-1136 B
# at 128 x 256 and 128 x 128 tiles (IEEE and TF32); the epilogue kernel's 16-bit configs
# spilled 17-28 KB with the FMA dot (IEEE) and needed 196-262 KB of shared memory with
# TF32 (e128x128: over the limit, the launch would fail). The ones below compile clean
# (the compile gate's fp32 rows, kernels/compiled.md).
TWIN_FP32 = "pack4x32"
EPILOGUE_FP32_IEEE = EpilogueConfig("f64x64", block_m=64, block_n=64, block_k=16, num_stages=4,
                                    num_warps=4)
EPILOGUE_TF32 = EpilogueConfig("tf128x128", block_m=128, block_n=128, block_k=32, num_stages=3,
                               num_warps=8)


def swapab_config(name: str, *, interpreting: bool = False) -> SwapABConfig:
    if interpreting:
        return INTERPRETER_SWAPAB[name]
    for cfg in SWAPAB_CONFIGS:
        if cfg.name == name:
            return cfg
    raise KeyError(f"no swap-AB config {name!r}; have {[c.name for c in SWAPAB_CONFIGS]}")


def twin_config(name: str, dtype: torch.dtype, *, interpreting: bool = False) -> SwapABConfig:
    """The twin's tiles for the model's pick ``name``: the same as the Gluon kernel's, but
    small ones in the interpreter and ``TWIN_FP32``'s for fp32 on a GPU. The twin holds
    every slot's accumulator and combined tile at once (the Gluon kernel's loop order), so
    multi-slot tiles of 128 weight rows run 8 warps (at 4, pack2x64 spilled at M = 32:
    ptxas -v, Triton 3.6 and 3.8), and fp32 runs 8 warps and K-steps of 16 (pack4x32 with
    fp32 IEEE spilled 240 B at 4 warps and 84 B at 8 warps with K-steps of 32, Triton 3.8)."""
    if interpreting:
        return INTERPRETER_SWAPAB[name]
    if dtype == torch.float32:
        return dataclasses.replace(swapab_config(TWIN_FP32), block_k=16, num_warps=8)
    cfg = swapab_config(name)
    if cfg.slots > 1 and cfg.block_n >= 128 and cfg.num_warps < 8:
        cfg = dataclasses.replace(cfg, num_warps=8)
    return cfg


def epilogue_config(name: str, dtype: torch.dtype, ieee: bool, *,
                    interpreting: bool = False) -> EpilogueConfig:
    """The epilogue kernel's tiles: the model's pick ``name`` for 16-bit inputs, the fp32
    configs for fp32 (IEEE: the FMA dot; else TF32), ``INTERPRETER_EPILOGUE`` there."""
    if interpreting:
        return INTERPRETER_EPILOGUE
    if dtype == torch.float32:
        return EPILOGUE_FP32_IEEE if ieee else EPILOGUE_TF32
    for cfg in EPILOGUE_CONFIGS:
        if cfg.name == name:
            return cfg
    raise KeyError(f"no epilogue config {name!r}; have {[c.name for c in EPILOGUE_CONFIGS]}")


#: Compiled shared memory above ``gluon_smem_bytes`` (alignment, the epilogue's layout
#: conversion): 0-4100 B over every compiled variant (the compile gate holds every Gluon
#: variant to model <= compiled <= model + slack: its ``model`` check).
GLUON_SMEM_SLACK = 8192


def gluon_smem_bytes(cfg: SwapABConfig, elem_bytes: int = 2) -> int:
    """Shared memory of the Gluon kernel: the two TMA rings and their mbarriers.

    Independent of M: the weight ring holds single tiles.
    """
    rings = (cfg.w_stages * cfg.block_n + cfg.x_stages * cfg.slots * cfg.slot_t)
    return rings * cfg.block_k * elem_bytes + 2 * 8 * (cfg.w_stages + cfg.x_stages)


#: Compiled shared memory above ``epilogue_smem_bytes`` (mbarriers, the epilogue's layout
#: conversion): 0-544 B over the compiled sm_90a variants (kernels/compiled.md, Triton 3.6
#: and 3.8: e.g. e128x128 131 104 B for a 131 072 B model).
EPILOGUE_SMEM_SLACK = 1024


def epilogue_smem_bytes(cfg: EpilogueConfig, elem_bytes: int) -> int:
    """Shared memory of the epilogue-scaled kernel: ``num_stages`` (x, w) tile pairs."""
    return cfg.num_stages * (cfg.block_m + cfg.block_n) * cfg.block_k * elem_bytes


#: Twin configs that spill off Hopper, per target: (config name, reason) rows. The measured
#: dispatch does not time them there; an explicit strategy="swapab" may still run them, and
#: the compile gate allows their spill with a reason.
TWIN_TILE_EXCEPTIONS: dict[tuple[int, int], tuple[tuple[str, str], ...]] = {
    arch.AMPERE.capability: (("pack2x64", "spills 8 B at M = 32 with mma.sync (Triton 3.8)"),),
    arch.ADA.capability: (("pack2x64", "spills 8 B at M = 32 with mma.sync (Triton 3.8)"),),
}

#: The twin configs that spill on some target off Hopper (names, from
#: ``TWIN_TILE_EXCEPTIONS``).
TWIN_SPILLS_OFF_HOPPER: tuple[str, ...] = tuple(dict.fromkeys(
    name for rows in TWIN_TILE_EXCEPTIONS.values() for name, _ in rows))


def epilogue_fits(name: str, dtype: torch.dtype, limit: int) -> bool:
    """Whether the epilogue config ``name`` (as ``epilogue_config`` maps it for ``dtype``,
    IEEE and TF32 alike bounded) fits ``limit`` bytes of shared memory (e128x128, 128 KiB,
    does not fit Ada's 99 KiB)."""
    elem = torch.empty((), dtype=dtype).element_size()
    if dtype == torch.float32:
        cfgs = [EPILOGUE_FP32_IEEE, EPILOGUE_TF32]
    else:
        cfgs = [epilogue_config(name, dtype, False)]
    return all(epilogue_smem_bytes(c, elem) + EPILOGUE_SMEM_SLACK <= limit for c in cfgs)


def fits(smem_bytes: int) -> bool:
    """Whether a program needing ``smem_bytes`` (plus the slack) can launch on an H100."""
    return smem_bytes + GLUON_SMEM_SLACK <= SMEM_LIMIT


# ------------------------------------------------------------------------ weight-stationary


@dataclass(frozen=True)
class WStatConfig:
    """Tile of the weight-stationary kernels (``wstat_gluon``, ``wstat_twin``).

    A program keeps the combined tile W_c[BLOCK_N, all K] resident in shared memory and
    streams its run of x rows through it, BLOCK_T rows per MMA tile (wgmma's N), K in
    BLOCK_K slices (the resident tile is stored as ceil(K / BLOCK_K) such slices, the x
    ring holds ``stages`` [BLOCK_T, BLOCK_K] tiles). ``chunk_k``: K columns the combine
    phase loads per model at a time (memory-level parallelism of that phase).
    """

    name: str
    block_n: int
    block_t: int
    block_k: int
    stages: int
    num_warps: int
    chunk_k: int = 64

    @property
    def maxnreg(self) -> int:
        return 232 if self.num_warps == 4 else 168


WSTAT_CONFIGS = (
    # K <= 768 (ViT-B fc1/QKV): 128 weight rows (two warp groups of 64) resident, 192 KB at
    # K = 768; x tiles of 128 rows, 2-stage ring of 16 KB tiles.
    WStatConfig("ws128", block_n=128, block_t=128, block_k=64, stages=2, num_warps=8),
    # K <= 1280 (ViT-L fc1/QKV): 64 weight rows (one warp group) resident, 128 KB at
    # K = 1024; x tiles of 128 rows, 4-stage ring. (x tiles of 256 rows spilled 4-144 B at
    # 232 registers: 3.6 and 3.8, sm_90a, the compile gate.)
    WStatConfig("ws64", block_n=64, block_t=128, block_k=64, stages=4, num_warps=4),
)

#: The SM count the run-length rule uses in the interpreter: few SMs, so that the small test
#: shapes get runs of several row blocks, and groups cut into several runs.
INTERPRETER_SMS = 8

INTERPRETER_WSTAT = {
    "ws128": WStatConfig("ws128", block_n=32, block_t=16, block_k=16, stages=1, num_warps=4,
                         chunk_k=16),
    "ws64": WStatConfig("ws64", block_n=16, block_t=32, block_k=16, stages=1, num_warps=4,
                        chunk_k=16),
}

#: Compiled shared memory above ``wstat_smem_bytes`` allowed by the gate (alignment).
WSTAT_SMEM_SLACK = 1024


def wstat_config(name: str, *, interpreting: bool = False) -> WStatConfig:
    if interpreting:
        return INTERPRETER_WSTAT[name]
    for cfg in WSTAT_CONFIGS:
        if cfg.name == name:
            return cfg
    raise KeyError(f"no weight-stationary config {name!r}; have "
                   f"{[c.name for c in WSTAT_CONFIGS]}")


def wstat_smem_bytes(cfg: WStatConfig, k_dim: int, elem_bytes: int = 2) -> int:
    """Shared memory of the Gluon weight-stationary kernel for K = ``k_dim``: the resident
    combined tile, the x ring and its mbarriers. Grows with K, not with M."""
    k_pad = -(-k_dim // cfg.block_k) * cfg.block_k
    resident = cfg.block_n * k_pad * elem_bytes
    ring = cfg.stages * cfg.block_t * cfg.block_k * elem_bytes
    return resident + ring + 8 * cfg.stages


def wstat_fits(cfg: WStatConfig, k_dim: int, elem_bytes: int = 2) -> bool:
    """Whether the Gluon weight-stationary kernel with ``cfg`` can launch for this K."""
    return wstat_smem_bytes(cfg, k_dim, elem_bytes) + WSTAT_SMEM_SLACK <= SMEM_LIMIT


def wstat_run_rows(num_rows: int, num_groups: int, n_dim: int, cfg: WStatConfig,
                   sms: int = 132) -> int:
    """Rows per program (a multiple of BLOCK_T) of the weight-stationary kernels.

    Each program pays one combine of its resident tile, so runs are as long as filling
    the SMs in one wave allows: ``sms // n_tiles`` runs per N tile for one group (24 N
    tiles of ViT-B fc1: 5 runs of 2560 rows, 120 programs); each further group can add one
    run (a tail), so it costs one run less. No host sync: only the call's sizes are used.
    """
    n_tiles = -(-n_dim // cfg.block_n)
    runs = max(1, sms // n_tiles - (min(num_groups, max(num_rows, 1)) - 1))
    blocks = -(-max(num_rows, 1) // cfg.block_t)
    return cfg.block_t * -(-blocks // runs)


#: The twin's tiles for fp32 on a GPU (only an explicit strategy="wstat" sends fp32 there:
#: the Gluon kernel has no fp32); the 16-bit tiles are the Gluon configs'.
WSTAT_TWIN_FP32 = WStatConfig("wtf32", block_n=64, block_t=64, block_k=32, stages=1,
                              num_warps=4)


def wstat_twin_config(name: str, dtype: torch.dtype, *, interpreting: bool = False
                      ) -> WStatConfig:
    """The twin's tiles for the pick ``name``: the Gluon config's, small ones in the
    interpreter, ``WSTAT_TWIN_FP32`` for fp32 on a GPU."""
    if interpreting:
        return INTERPRETER_WSTAT[name]
    return WSTAT_TWIN_FP32 if dtype == torch.float32 else wstat_config(name)
