"""``"wstat"``: the weight-stationary kernel for large groups, two implementations.

The Gluon kernel (``wstat_gluon``) keeps a group's combined weight tile resident in
shared memory while its rows stream past; it runs where Gluon can and its resident tile
fits this K (``fused_configs.wstat_fits``: K <= 1280). Elsewhere (K too large, fp32, no
Gluon, the interpreter) its plain-Triton twin (``wstat_twin``) runs, which only a forced
strategy reaches: the model ranks the Gluon kernel, and only where its tile fits K.
"""

from __future__ import annotations

from .. import cost_model, dispatch, wstat_gluon, wstat_twin
from ..fused_configs import WSTAT_CONFIGS, wstat_fits
from ..registry import Strategy

_CONFIGS = {c.name: c for c in WSTAT_CONFIGS}


def _implementation(plan) -> str:
    call = plan.call
    return "Gluon" if dispatch.wstat_on_gluon_facts(call.target.gluon, plan.config,
                                                    call.k_dim, call.dtype) else "twin"


STRATEGY = Strategy(
    name="wstat",
    summary="weight-stationary, combined tile resident in shared memory (Gluon; twin)",
    launch=dispatch.launcher("wstat"),
    configs=tuple(_CONFIGS),
    predict=lambda case, config: cost_model.wstat(case, _CONFIGS[config]).seconds,
    fits_k=lambda config, k_dim: wstat_fits(_CONFIGS[config], k_dim),
    # the model's wstat is the Gluon kernel; its twin is a correctness fallback
    measurable=lambda config, target, dtype: target.gluon,
    fallback=lambda: min(WSTAT_CONFIGS, key=lambda c: c.block_n).name,
    implementation=_implementation,
    compile_variants=(wstat_gluon.compile_variants, wstat_twin.compile_variants),
)
