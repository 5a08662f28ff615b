"""Launch configurations for the interpolation GEMMs, and the shared-memory model that prunes them.

On a GPU, ``triton.autotune`` picks among these per (N, K, M, row-count bucket, dtypes).
Under the Triton interpreter (``TRITON_INTERPRET=1``) one small config is pinned: autotuning
there would only cost time, and small tiles make small test shapes cover multi-tile paths.

Every GPU config is pruned before autotuning by a shared-memory model of what Triton
allocates for it (``combine_shared_bytes``, ``rowscaled_shared_bytes``): a config whose
model exceeds the running device's limit (``arch.shared_memory_limit``: 232 448 B on
Hopper, 166 912 B on an A100, 101 376 B on Ada) is never benchmarked, so autotune cannot
pick a config that would fail to launch. The models were read off compiled kernels (Triton 3.6
and 3.8, sm_90a, launch specialization) and the compile gate
(``dawin_fast.kernel_tools.compile_gate``) checks them against the compiled size of every
variant it builds: never below it, and equal to it unless the variant says why not
(unaligned calls are not pipelined, so they use far less than the pipelined model).

The pruner also sorts calls into families: 16-bit, fp32, and unaligned (K or a K-stride
not a multiple of 16, where Triton cannot pipeline the loads and bigger tiles spill);
``ROWSCALED_NOT_AT_M1`` drops three tiles that ptxas serializes when M = 1, and
``TILE_EXCEPTIONS`` the tiles that spill off Hopper, per target, each row with its reason.

Config lists (tile sizes, warps, stages), one per element-size family:

* 16-bit (bf16, fp16) and fp32 with TF32: tensor cores (wgmma), tiles chosen so that ptxas
  neither spills nor serializes wgmma (see ``kernels/compiled.md``).
* fp32 with IEEE precision (``F.linear``'s default): the dot runs on CUDA cores (FMA), so
  small tiles; larger ones spill hundreds of bytes to thousands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from . import arch

# Largest dynamic shared memory per block on H100/H200 (sm_90, the opt-in maximum:
# 227 KiB = 232448 B; cudaDevAttrMaxSharedMemoryPerBlockOptin). Other GPUs: ``arch``.
SHARED_MEMORY_LIMIT = arch.HOPPER.smem_limit


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def rows_bucket(num_rows: int) -> int:
    """Autotune key for the row count: the next power of two (capped), not the exact value."""
    return min(triton.next_power_of_2(max(num_rows, 1)), 1 << 16)


_INTERPRETER_CONFIG = dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=4)

# combine: (BLOCK_N, BLOCK_K, num_warps, num_stages); BLOCK_M is fixed by the schedule.
# Shared memory grows with M (every model's weight tile is pipelined), so the 2-stage and
# 32-wide tiles exist for large M: at M = 32 only (64, 32, 4, 2), (32, 32, 4, 3) and
# (32, 32, 4, 2) fit.
COMBINE_16BIT = (
    (128, 64, 8, 3), (128, 64, 4, 4), (64, 64, 4, 4), (128, 32, 4, 4), (64, 128, 4, 3),
    (64, 32, 4, 5), (128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 3), (64, 32, 4, 3),
    (64, 32, 4, 2), (32, 32, 4, 3), (32, 32, 4, 2),
)
COMBINE_FP32 = ((64, 16, 8, 4), (32, 16, 4, 4), (32, 32, 8, 3), (128, 16, 8, 3))
# Unaligned calls (a K-stride not a multiple of 16): Triton cannot prove 16-byte rows, so
# it does not pipeline the loads and bigger tiles spill.
COMBINE_UNALIGNED = ((128, 32, 8, 3), (32, 32, 4, 3), (32, 32, 4, 2))

# rowscaled: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). BLOCK_M >= 64: with
# BLOCK_M = 32 Triton lowers the dot to mma.sync instead of wgmma.
ROWSCALED_16BIT = (
    (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4),
    (128, 64, 64, 4, 4), (64, 128, 32, 4, 5), (128, 256, 32, 8, 3), (128, 128, 32, 8, 5),
)
ROWSCALED_FP32 = ((64, 64, 32, 4, 2), (64, 64, 32, 4, 3), (64, 64, 16, 4, 4))
ROWSCALED_UNALIGNED = ((128, 128, 32, 8, 5), (64, 64, 32, 4, 3), (128, 64, 32, 8, 3),
                       (64, 32, 32, 4, 3))
#: Rowscaled tiles dropped at M = 1 on every target, each with why: (config key, reason).
ROWSCALED_M1_EXCEPTIONS = tuple(
    (config, "with M = 1 the model loop folds away and ptxas serializes wgmma (C7515)")
    for config in ((64, 64, 64, 4, 4), (128, 64, 64, 4, 4), (128, 256, 32, 8, 3)))
ROWSCALED_NOT_AT_M1 = tuple(config for config, _ in ROWSCALED_M1_EXCEPTIONS)
@dataclass(frozen=True)
class TileException:
    """One config autotune never tries on one target, and why.

    ``kind``: "combine" or "rowscaled"; ``family``: "16bit" (bf16, fp16; aligned and
    unaligned lists alike) or "fp32" (IEEE and TF32 alike); ``config``: the key
    (BLOCK_M or None for combine, BLOCK_N, BLOCK_K, num_warps, num_stages).
    """

    kind: str
    family: str
    config: tuple
    reason: str


# Off Hopper the dot is mma.sync, whose operands and accumulators sit in registers
# differently from wgmma's, so ptxas spills some tiles that are clean on sm_90a. Each row
# was read off the compile gate (Triton 3.8, kernels/compiled.md) unless its reason says
# it is a prediction. One spill is kept rather than excluded: combine's 32x32 w4 s2 on
# sm_89 (4 B at fp16 M = 16 per sample), the only combine tile within Ada's 101 376 B at
# M = 32; the gate allows it with that reason.
_MMA_SYNC = "with mma.sync: "
TILE_EXCEPTIONS: dict[tuple[int, int], tuple[TileException, ...]] = {
    arch.AMPERE.capability: (
        TileException("rowscaled", "16bit", (128, 128, 64, 8, 4),
                      _MMA_SYNC + "spills 8 B at M >= 8 with per-sample groups"),
        TileException("rowscaled", "16bit", (64, 128, 64, 4, 4), _MMA_SYNC + "spills 28 B"),
        TileException("rowscaled", "16bit", (64, 64, 64, 4, 4),
                      _MMA_SYNC + "spills 12-20 B at M >= 8 with per-sample groups"),
        TileException("rowscaled", "16bit", (128, 64, 64, 4, 4), _MMA_SYNC + "spills 32 B"),
        TileException("rowscaled", "16bit", (128, 256, 32, 8, 3), _MMA_SYNC + "spills 24 B"),
        TileException("rowscaled", "16bit", (128, 128, 32, 8, 5),
                      _MMA_SYNC + "spills 48 B on unaligned calls with per-sample groups"),
        TileException("rowscaled", "fp32", (64, 64, 32, 4, 2),
                      _MMA_SYNC + "the 32-deep K tile spills 4-16 B, TF32 and IEEE"),
        TileException("rowscaled", "fp32", (64, 64, 32, 4, 3),
                      _MMA_SYNC + "the 32-deep K tile spills 4-16 B, TF32 and IEEE"),
        TileException("combine", "16bit", (None, 128, 64, 4, 4),
                      _MMA_SYNC + "spills 176-192 B at M = 1"),
        TileException("combine", "16bit", (None, 64, 128, 4, 3),
                      _MMA_SYNC + "spills 176-192 B at M = 1"),
        TileException("combine", "16bit", (None, 128, 32, 8, 3),
                      _MMA_SYNC + "spills 52 B at bf16 M = 2 on unaligned calls (K = 200)"),
    ),
    arch.ADA.capability: (
        TileException("rowscaled", "16bit", (128, 128, 64, 8, 3),
                      _MMA_SYNC + "spills 16 B at M >= 8 with per-sample groups"),
        TileException("rowscaled", "16bit", (64, 128, 64, 4, 4), _MMA_SYNC + "spills 36 B"),
        TileException("rowscaled", "16bit", (64, 64, 64, 4, 4),
                      _MMA_SYNC + "spills 20 B at M >= 8 with per-sample groups"),
        TileException("rowscaled", "16bit", (128, 64, 64, 4, 4), _MMA_SYNC + "spills 12 B"),
        TileException("rowscaled", "16bit", (128, 256, 32, 8, 3), _MMA_SYNC + "spills 16 B"),
        TileException("combine", "16bit", (None, 128, 64, 4, 4),
                      "a prediction from sm_80, where it spills 176-192 B at M = 1 with "
                      "mma.sync; the gate's sampled calls pruned it by shared memory here"),
        TileException("combine", "16bit", (None, 64, 128, 4, 3),
                      "a prediction from sm_80, where it spills 176-192 B at M = 1 with "
                      "mma.sync; the gate's sampled calls pruned it by shared memory here"),
    ),
}


def _by_family(rows: dict[tuple[int, int], tuple[TileException, ...]]
               ) -> dict[tuple[str, str, tuple[int, int]], set[tuple]]:
    out: dict[tuple[str, str, tuple[int, int]], set[tuple]] = {}
    for capability, exceptions in rows.items():
        for row in exceptions:
            out.setdefault((row.kind, row.family, capability), set()).add(row.config)
    return out


#: ``TILE_EXCEPTIONS`` as the pruner reads it: (kind, "16bit" or "fp32", capability) ->
#: config keys excluded there.
SPILLS_OFF_HOPPER = _by_family(TILE_EXCEPTIONS)


def tensor_cores(dtype: torch.dtype, ieee: bool) -> bool:
    """Whether the dot runs on tensor cores (wgmma): all but fp32 with IEEE precision."""
    return dtype != torch.float32 or not ieee


def combine_shared_bytes(block_m: int, block_n: int, block_k: int, num_stages: int,
                         num_models: int, elem: int, mma: bool) -> int:
    """Shared memory of one combine program: S x-tiles, M (S-1) pipelined weight tiles and
    the combined weight tile stored for wgmma's B operand. Exact with tensor cores; for the
    FMA dot (fp32 IEEE) an upper bound (its layout-conversion scratch varies by warps)."""
    del mma
    tiles = (num_stages * block_m * block_k + num_models * (num_stages - 1) * block_k * block_n
             + block_k * block_n)
    return elem * tiles


def rowscaled_shared_bytes(block_m: int, block_n: int, block_k: int, num_stages: int,
                           num_models: int, elem: int, mma: bool) -> int:
    """Shared memory of one row-scaled program: S-1 pipelined (x, w) tile pairs plus one
    more weight tile (tensor cores) or x tile (FMA dot). Independent of M."""
    del num_models  # the model loop reuses the same buffers
    tiles = (num_stages - 1) * (block_m * block_k + block_k * block_n)
    tiles += block_k * block_n if mma else block_m * block_k
    return elem * tiles


def _configs(kind: str) -> list[triton.Config]:
    if kind == "combine":
        rows = [(None, *c) for c in dict.fromkeys(COMBINE_16BIT + COMBINE_FP32
                                                  + COMBINE_UNALIGNED)]
    else:
        rows = list(dict.fromkeys(ROWSCALED_16BIT + ROWSCALED_FP32 + ROWSCALED_UNALIGNED))
    out = []
    for bm, bn, bk, w, s in rows:
        kwargs = dict(BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8)
        if bm is not None:
            kwargs = dict(BLOCK_M=bm, **kwargs)
        out.append(triton.Config(kwargs, num_warps=w, num_stages=s))
    return out


def gpu_configs(kind: str) -> list[triton.Config]:
    """Every GPU config of ``kind`` ("combine" or "rowscaled"), before pruning."""
    return _configs(kind)


def _family(kind: str, dtype: torch.dtype, aligned: bool, num_models: int, ieee: bool = False,
            capability: tuple[int, int] = arch.HOPPER.capability) -> set[tuple]:
    spills = SPILLS_OFF_HOPPER.get(
        (kind, "fp32" if dtype == torch.float32 else "16bit", tuple(capability)), set())
    if kind == "combine":
        rows = (COMBINE_FP32 if dtype == torch.float32 else
                COMBINE_16BIT if aligned else COMBINE_UNALIGNED)
        return {(None, *r) for r in rows} - spills
    rows = (ROWSCALED_FP32 if dtype == torch.float32 else
            ROWSCALED_16BIT if aligned else ROWSCALED_UNALIGNED)
    out = set(rows) - (set(ROWSCALED_NOT_AT_M1) if num_models == 1 else set())
    return out - spills


def _key(config: triton.Config) -> tuple:
    k = config.kwargs
    return (k.get("BLOCK_M"), k["BLOCK_N"], k["BLOCK_K"], config.num_warps, config.num_stages)


def aligned(k_dim: int, strides: tuple[int, ...], pointers: tuple[int, ...] = ()) -> bool:
    """Whether Triton can prove 16-element rows: K and the row strides of the
    K-contiguous operands divisible by 16 (the launch specialization's test), addresses
    16-byte aligned."""
    return (k_dim % 16 == 0 and all(s % 16 == 0 for s in strides)
            and all(p % 16 == 0 for p in pointers))


def shared_bytes(kind: str, config: triton.Config, num_models: int, dtype: torch.dtype,
                 ieee: bool, block_m: int | None = None) -> int:
    """Modeled shared memory of ``config`` for a call of ``kind`` (see the module doc)."""
    model = combine_shared_bytes if kind == "combine" else rowscaled_shared_bytes
    k = config.kwargs
    return model(k.get("BLOCK_M", block_m), k["BLOCK_N"], k["BLOCK_K"], config.num_stages,
                 num_models, torch.empty((), dtype=dtype).element_size(),
                 tensor_cores(dtype, ieee))


def fitting_configs(kind: str, num_models: int, dtype: torch.dtype, ieee: bool,
                    block_m: int | None = None, is_aligned: bool = True,
                    configs: list[triton.Config] | None = None,
                    limit: int | None = None,
                    capability: tuple[int, int] | None = None) -> list[triton.Config]:
    """The GPU configs autotune may pick for such a call: the call's family (dtype,
    alignment, M), within ``limit`` bytes of shared memory by the model (default: the
    assumed target's, ``arch.assumed()``; a launch passes its device's). Empty when none
    fits. ``capability``: the device's (default the assumed target's), for the few configs
    one architecture cannot build cleanly."""
    capability = arch.assumed().capability if capability is None else capability
    family = _family(kind, dtype, is_aligned, num_models, ieee, capability)
    configs = gpu_configs(kind) if configs is None else configs
    limit = arch.assumed().smem_limit if limit is None else limit
    return [c for c in configs if _key(c) in family
            and shared_bytes(kind, c, num_models, dtype, ieee, block_m) <= limit]


def _pruner(kind: str):
    def prune(configs, named_args, **kwargs):
        if interpreting():
            return configs
        x, w = named_args["x_ptr"], named_args["w_ptr"]
        is_aligned = (kwargs["stride_xk"] == 1 and kwargs["stride_wk"] == 1 and aligned(
            named_args["K"], (kwargs["stride_xt"], kwargs["stride_wn"], kwargs["stride_wm"]),
            (x.data_ptr(), w.data_ptr())))
        limit = arch.shared_memory_limit(x.device)
        kept = fitting_configs(kind, kwargs["M"], x.dtype, kwargs["IEEE"], kwargs.get("BLOCK_M"),
                               is_aligned, configs, limit, arch.capability(x.device))
        if not kept:  # the dispatcher never sends such a call (interp_matmul checks first)
            raise ValueError(f"{kind}: no config fits {limit} B of shared "
                             f"memory at M={kwargs['M']}, {x.dtype}")
        return kept
    return prune


def combine_configs() -> list[triton.Config]:
    """Configs for the combine kernel (BLOCK_M is fixed by the launcher's schedule)."""
    if interpreting():
        return [triton.Config(_INTERPRETER_CONFIG, num_warps=4, num_stages=1)]
    return gpu_configs("combine")


def rowscaled_configs() -> list[triton.Config]:
    """Configs for the row-scaled kernel."""
    if interpreting():
        return [triton.Config(dict(BLOCK_M=16, **_INTERPRETER_CONFIG), num_warps=4, num_stages=1)]
    return gpu_configs("rowscaled")


PRUNE_COMBINE = {"early_config_prune": _pruner("combine")}
PRUNE_ROWSCALED = {"early_config_prune": _pruner("rowscaled")}
