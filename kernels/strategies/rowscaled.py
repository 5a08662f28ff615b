"""``"rowscaled"``: y = sum_i diag(c_i) X W_i^T, one GEMM over an M times longer K.

Each row's coefficient scales the X tile in registers; the W_i tiles go to ``tl.dot``
untouched, so any grouping runs at the same speed (M x the tensor-core FLOPs, no weight
combine). Never launched on Hopper for a dtype that takes wgmma: its scaled X tile is
wgmma's register A, which Triton's pipeliner rewrites while the wgmma may still read it
(``dispatch.ROWSCALED_HAZARD``); its calls run "epilogue" there. Triton autotunes its
configs.
"""

from __future__ import annotations

from .. import planning
from ..interp_matmul import compile_variants, launch_autotuned
from ..registry import Strategy

STRATEGY = Strategy(
    name="rowscaled",
    summary="row-scaled x tiles, one GEMM over M x K (autotuned; not on Hopper)",
    launch=launch_autotuned,
    autotune_fits=planning.autotune_fits("rowscaled"),
    compile_variants=(compile_variants,),
)
