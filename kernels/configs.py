"""Launch configurations for the interpolation GEMMs.

On a GPU, ``triton.autotune`` picks among these per (N, K, M, row-count bucket). Under the
Triton interpreter (``TRITON_INTERPRET=1``) one small config is pinned: autotuning there
would only cost time, and small tiles make small test shapes cover multi-tile paths.
"""

from __future__ import annotations

import os

import triton


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def rows_bucket(num_rows: int) -> int:
    """Autotune key for the row count: the next power of two (capped), not the exact value."""
    return min(triton.next_power_of_2(max(num_rows, 1)), 1 << 16)


_INTERPRETER_CONFIG = dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=4)


def combine_configs() -> list[triton.Config]:
    """Configs for the combine kernel (BLOCK_M is fixed by the launcher's schedule)."""
    if interpreting():
        return [triton.Config(_INTERPRETER_CONFIG, num_warps=4, num_stages=1)]
    return [
        triton.Config(dict(BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8), num_warps=w, num_stages=s)
        for bn, bk, w, s in [
            (128, 64, 8, 3), (128, 64, 4, 4), (64, 64, 4, 4), (256, 64, 8, 3),
            (128, 32, 4, 4), (64, 128, 4, 3), (128, 128, 8, 3), (64, 32, 4, 5),
        ]
    ]


def rowscaled_configs() -> list[triton.Config]:
    """Configs for the row-scaled kernel."""
    if interpreting():
        return [triton.Config(dict(BLOCK_M=16, **_INTERPRETER_CONFIG), num_warps=4, num_stages=1)]
    return [
        triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8),
                      num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [
            (128, 128, 64, 8, 3), (128, 128, 64, 4, 4), (64, 128, 64, 4, 4),
            (128, 256, 64, 8, 3), (64, 64, 64, 4, 4), (128, 64, 64, 4, 4),
            (64, 128, 32, 4, 5), (32, 64, 64, 4, 4),
        ]
    ]
