"""``"swapab"``: the swap-AB register-combine kernel, two implementations.

The Gluon kernel (``swapab_gluon``) on a Hopper GPU where Gluon can run (sm_90, fp16/bf16,
TMA-addressable operands, DAWIN_FAST_GLUON=1); elsewhere its plain-Triton twin
(``swapab_twin``) with the same tiling and schedule. The traffic model (``cost_model``)
ranks its configs (``fused_configs.SWAPAB_CONFIGS``); off Hopper the twin's configs that
spill there (``fused_configs.TWIN_SPILLS_OFF_HOPPER``) are not timed.
"""

from __future__ import annotations

from .. import cost_model, dispatch, swapab_gluon, swapab_twin
from ..fused_configs import SWAPAB_CONFIGS, TWIN_SPILLS_OFF_HOPPER
from ..registry import Strategy

_CONFIGS = {c.name: c for c in SWAPAB_CONFIGS}


STRATEGY = Strategy(
    name="swapab",
    summary="swap-AB register combine (Gluon on Hopper, its twin elsewhere)",
    launch=dispatch.launcher("swapab"),
    configs=tuple(_CONFIGS),
    predict=lambda case, config: cost_model.swapab(case, _CONFIGS[config]).seconds,
    measurable=lambda config, target, dtype: (target.hopper
                                              or config not in TWIN_SPILLS_OFF_HOPPER),
    implementation=lambda plan: "Gluon" if plan.call.target.gluon else "twin",
    compile_variants=(swapab_gluon.compile_variants, swapab_twin.compile_variants),
)
