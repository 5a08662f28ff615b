"""``"epilogue"``: the epilogue-scaled multi-GEMM (``epilogue_scaled``).

M GEMMs per tile, each accumulator scaled by the row's coefficient in the epilogue (no
register-A operand: the kernel "rowscaled" calls run on Hopper). TMA loads on Hopper,
pointer loads elsewhere. The traffic model ranks its configs
(``fused_configs.EPILOGUE_CONFIGS``) among those that fit the device's shared memory
(``epilogue_fits``: e128x128 does not fit Ada's); the measured dispatch times it on Hopper
only (off Hopper its compiled tiles spill).
"""

from __future__ import annotations

from .. import cost_model, dispatch, epilogue_scaled
from ..fused_configs import EPILOGUE_CONFIGS, epilogue_fits
from ..registry import Strategy

_CONFIGS = {c.name: c for c in EPILOGUE_CONFIGS}


STRATEGY = Strategy(
    name="epilogue",
    summary="epilogue-scaled multi-GEMM (TMA on Hopper, pointer loads elsewhere)",
    launch=dispatch.launcher("epilogue"),
    configs=tuple(_CONFIGS),
    predict=lambda case, config: cost_model.epilogue(case, _CONFIGS[config]).seconds,
    fits_device=epilogue_fits,
    measurable=lambda config, target, dtype: (target.hopper and epilogue_fits(
        config, dtype, target.smem_limit)),
    compile_variants=(epilogue_scaled.compile_variants,),
)
