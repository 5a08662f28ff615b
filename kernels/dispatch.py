"""The call's target, the cost model's ranking of the modeled strategies, and their launch.

``target_for`` reads what the device and the operands allow (``Target``); ``planning``
calls it once per call. The modeled strategies (the registry's with a ``predict``:
"swapab", "epilogue", "wstat", ``kernels/strategies/``) are costed by the traffic model
(``cost_model``) for (rows per group, G, M, N, K): ``choose`` is the cheapest where the
Gluon kernel can run (CUDA sm_90, fp16/bf16, TMA-addressable: the model is of the H100),
``best_config`` a strategy's cheapest config that fits the device, ``candidates`` what the
measured dispatch times. Every such choice is the model's, not a measurement: no GPU has
timed these kernels yet. Elsewhere ``choose`` returns None and ``planning`` keeps the rule
of "combine" and "rowscaled" (from H100 probes).

``launch`` runs "swapab", "epilogue" or "wstat": the Gluon kernel where it can run, else
its plain-Triton twin with the same tiling (the interpreter, another GPU, a Triton without
Gluon, fp32, strides TMA cannot address, DAWIN_FAST_GLUON unset; fp32 on a GPU takes the
twin's fp32 tiles); "wstat"'s Gluon kernel also needs its resident tile to fit K
(``fused_configs.wstat_fits``: K <= 1280). Every kernel and config it can run on a GPU is
compiled for sm_90a on Triton 3.6 and 3.8 by the compile gate, and
``tests/kernels/test_dispatch.py`` checks that the configs routed here are the gated ones.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from . import arch, cost_model, registry
from .common import use_ieee
from .configs import interpreting
from .epilogue_scaled import epilogue_scaled_matmul
from .fused_configs import (
    epilogue_config,
    swapab_config,
    twin_config,
    wstat_config,
    wstat_fits,
    wstat_twin_config,
)
from .swapab_gluon import GLUON_AVAILABLE, swapab_gluon_matmul, tma_compatible
from .swapab_twin import swapab_twin_matmul
from .wstat_gluon import wstat_gluon_matmul, wstat_reason
from .wstat_twin import wstat_twin_matmul

#: The modeled strategies by name, for benchmarks/first_contact.py, triton_cache.py and
#: gpu_session.py, which do not walk ``registry`` yet (everything in kernels/ does).
NEW_STRATEGIES = ("swapab", "epilogue", "wstat")

#: The Gluon kernels run only where DAWIN_FAST_GLUON=1 is set. Their numerics have never
#: run (Gluon has no interpreter, and no GPU has checked them yet), so they are opt-in
#: until the GPU tests that call them directly pass on an H100. Without it, "swapab" and
#: "wstat" run their twins and the cost model's ranking is not the default rule.
GLUON_ENABLED = os.environ.get("DAWIN_FAST_GLUON", "0") == "1"


@dataclass(frozen=True)
class Target:
    """What the device and the operands allow."""

    cuda: bool  # compiled kernels (not the interpreter)
    half: bool  # fp16/bf16 operands (the Gluon kernel's wgmma types)
    gluon: bool  # the Gluon kernel can run: sm_90, Gluon present, TMA-addressable operands
    #: sm_90 (wgmma and TMA exist; else no TMA descriptors either). CPU tensors stand for
    #: ``arch.assumed()``'s configs and count as Hopper here; a register-A wgmma can be
    #: overwritten in flight on a real one only (``rowscaled_hazard``). ``gluon`` implies it.
    hopper: bool = True
    smem_limit: int = arch.HOPPER.smem_limit  # the device's shared memory per block


def target_for(x: torch.Tensor, weight: torch.Tensor) -> Target:
    """The call's target; the device's properties are queried once per device."""
    cuda = x.is_cuda and not interpreting()
    half = x.dtype in (torch.float16, torch.bfloat16)
    hopper = arch.hopper(x.device) if cuda else True
    gluon = (cuda and half and GLUON_AVAILABLE and GLUON_ENABLED and hopper
             and tma_compatible(x, weight) is None)
    limit = arch.shared_memory_limit(x.device) if cuda else arch.assumed().smem_limit
    return Target(cuda=cuda, half=half, gluon=gluon, hopper=hopper, smem_limit=limit)


#: Why "rowscaled" never runs on Hopper. Stated by ``kernel_choice`` and the warning of a
#: forced "rowscaled" there.
ROWSCALED_HAZARD = (
    "rowscaled is not launched on sm_90: it feeds the row-scaled x tile to wgmma as a "
    "register A operand, and its compiled loop rewrites those registers while a wgmma may "
    "still read them (undefined results; triton-lang/triton#9433; the compile gate's "
    "a_hazard check, SASS, Triton 3.6 and 3.8). Its calls run the epilogue-scaled kernel, "
    "which scales in the epilogue and passes the check")


def rowscaled_hazard(target: Target | None, dtype: torch.dtype, ieee: bool) -> bool:
    """Whether "rowscaled" would run its hazardous register-A wgmma loop here: a Hopper GPU
    (compiled: the interpreter has no wgmma) and a dtype that takes wgmma (fp16/bf16, fp32
    with TF32; fp32 IEEE runs on CUDA cores). Off Hopper (sm_80/sm_89) its dot is mma.sync,
    synchronous: no hazard."""
    return (target is not None and target.cuda and (target.hopper or target.gluon)
            and not (dtype == torch.float32 and ieee))


def served_by(strategy: str, target: Target | None, dtype: torch.dtype, ieee: bool) -> str:
    """The strategy that actually runs a call of ``strategy``: "epilogue" for "rowscaled"
    where ``rowscaled_hazard`` holds (``ROWSCALED_HAZARD``), else ``strategy`` itself."""
    if strategy == "rowscaled" and rowscaled_hazard(target, dtype, ieee):
        return "epilogue"
    return strategy


@dataclass(frozen=True)
class Choice:
    strategy: str
    config: str
    predicted_s: float


@functools.lru_cache(maxsize=4096)
def _costed(num_rows: int, num_groups: int, num_models: int, n_dim: int, k_dim: int):
    """Model predictions for every config of every modeled strategy (``registry``) that
    can run this K, cheapest first (groups of equal length; ties: registration order)."""
    case = cost_model.Case("", (max(num_rows // num_groups, 1),), num_models, n_dim, k_dim,
                              repeat=num_groups)
    out = [Choice(s.name, config, s.predict(case, config)) for s in registry.modeled()
           for config in s.configs if s.fits_k(config, k_dim)]
    return sorted(out, key=lambda c: c.predicted_s)


registry.on_change.append(_costed.cache_clear)


def choose(num_rows: int, num_groups: int, num_models: int, n_dim: int, k_dim: int,
           target: Target) -> Choice | None:
    """The modeled strategy (and config) for a call, or None to keep the rule of the
    autotuned kernels (``planning.default_strategy``).

    Model, not measured: the cheapest candidate of ``cost_model`` for groups of
    ``num_rows / num_groups`` rows. Only where the Gluon kernel can run (CUDA sm_90,
    fp16/bf16, TMA-addressable), since the model is of the H100.
    """
    if not (target.cuda and target.half and target.gluon) or num_rows == 0:
        return None
    groups = min(max(num_groups, 1), num_rows)  # empty groups cost nothing
    return _costed(num_rows, groups, num_models, n_dim, k_dim)[0]


def best_config(strategy: str, num_rows: int, num_groups: int, num_models: int, n_dim: int,
                k_dim: int, dtype: torch.dtype = torch.bfloat16,
                limit: int = arch.HOPPER.smem_limit) -> str:
    """The model's cheapest config of one strategy that fits ``limit`` bytes of shared
    memory (model, not measured). The swap-AB twin's tiles fit every target (at most
    24 KiB compiled); the epilogue kernel's need up to 128 KiB (``epilogue_fits``). "wstat"
    where no config fits this K: the one with the smallest resident tile (its twin runs)."""
    groups = min(max(num_groups, 1), max(num_rows, 1))
    ranked = _costed(max(num_rows, 1), groups, num_models, n_dim, k_dim)
    spec = registry.get(strategy)
    fitting = [c.config for c in ranked if c.strategy == strategy
               and spec.fits_device(c.config, dtype, limit)]
    if not fitting and spec.fallback is not None:
        return spec.fallback()
    if not fitting:
        raise ValueError(f"{strategy}: no config fits {limit} B of shared memory")
    return fitting[0]


def candidates(num_rows: int, num_groups: int, num_models: int, n_dim: int, k_dim: int,
               dtype: torch.dtype, target: Target, factor: float) -> list[Choice]:
    """The modeled strategies' configs worth timing on this target: the traffic model's
    ranking (a Hopper model: a prior and a pruner, not a prediction elsewhere), cut at
    ``factor`` times its best, keeping what each strategy's ``measurable`` allows there
    (e.g. no epilogue kernel off Hopper: with pointer loads and mma.sync every 16-bit and
    TF32 config the gate built there spills 8-36 B; an explicit strategy="epilogue" still
    runs there). Empty off CUDA, for fp32 (only an explicit strategy sends fp32 there) and
    for empty calls."""
    if not (target.cuda and target.half) or num_rows == 0:
        return []
    groups = min(max(num_groups, 1), num_rows)
    ranked = [c for c in _costed(num_rows, groups, num_models, n_dim, k_dim)
              if registry.get(c.strategy).measurable(c.config, target, dtype)]
    if not ranked:
        return []
    return [c for c in ranked if c.predicted_s <= factor * ranked[0].predicted_s]


def wstat_on_gluon(gluon: bool, x: torch.Tensor, weight: torch.Tensor, config: str) -> bool:
    """Whether a "wstat" call with ``config`` runs the Gluon kernel (``gluon``: the target
    allows it, and its resident tile fits this call) rather than the twin."""
    return gluon and wstat_reason(x, weight, wstat_config(config)) is None


def wstat_on_gluon_facts(gluon: bool, config: str, k_dim: int, dtype: torch.dtype) -> bool:
    """``wstat_on_gluon`` from a call's facts: where ``gluon`` holds, the operands are
    fp16/bf16 and TMA-addressable (``target_for``), so only the resident tile's fit to K
    is left to check."""
    return gluon and wstat_fits(wstat_config(config), k_dim, dtype.itemsize)


def launcher(strategy: str):
    """A fused strategy's ``Strategy.launch``: ``launch`` with the plan's config and target."""
    def run(plan, x, weight, coeffs, offsets, bias, y) -> torch.Tensor:
        return launch(strategy, x, weight, coeffs, offsets, bias, y, plan.config,
                      target=plan.call.target)
    return run


def launch(strategy: str, x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
           offsets: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
           config: str | None = None, *, target: Target | None = None) -> torch.Tensor:
    """Run "swapab", "epilogue" or "wstat" into ``y`` (rows, N and K > 0). ``target``: the
    call's (``planning.facts``), else read here."""
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    num_groups = coeffs.shape[0]
    if target is None:
        target = target_for(x, weight)
    if config is None:
        config = best_config(strategy, num_rows, num_groups, num_models, n_dim, k_dim,
                             x.dtype, target.smem_limit)
    ieee = use_ieee(x.dtype)
    # The configs below are the compile gate's (see the module doc).
    if strategy == "epilogue":
        cfg = epilogue_config(config, x.dtype, ieee, interpreting=interpreting())
        # TMA descriptors exist on Hopper only: pointer loads elsewhere (gated on all).
        use_tma = None if target.hopper else False
        return epilogue_scaled_matmul(x, weight, coeffs, offsets, bias, y, cfg, ieee=ieee,
                                      use_tma=use_tma)
    if strategy == "wstat":
        if wstat_on_gluon(target.gluon, x, weight, config):
            return wstat_gluon_matmul(x, weight, coeffs, offsets, bias, y, wstat_config(config))
        cfg = wstat_twin_config(config, x.dtype, interpreting=interpreting())
        return wstat_twin_matmul(x, weight, coeffs, offsets, bias, y, cfg, ieee=ieee)
    if target.gluon:
        return swapab_gluon_matmul(x, weight, coeffs, offsets, bias, y, swapab_config(config))
    cfg = twin_config(config, x.dtype, interpreting=interpreting())
    return swapab_twin_matmul(x, weight, coeffs, offsets, bias, y, cfg, ieee=ieee)
