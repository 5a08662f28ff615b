"""``"combine"``: every row block interpolates its weight tile in registers, then one dot.

A schedule gives every row block one group id (blocks never straddle groups, like vLLM's
fused_moe); each program combines its weight tile from the M models' tiles (fp32) and
feeds it to ``tl.dot``. Triton autotunes its configs (``configs.combine_configs``), among
those whose modeled shared memory fits the device; M tiles per step, so from M ~ 100
(16-bit) none fits.
"""

from __future__ import annotations

from .. import planning
from ..interp_matmul import compile_variants, launch_autotuned
from ..registry import Strategy

STRATEGY = Strategy(
    name="combine",
    summary="per-block weight combine in registers, then one dot (autotuned)",
    launch=launch_autotuned,
    autotune_fits=planning.autotune_fits("combine"),
    compile_variants=(compile_variants,),
)
