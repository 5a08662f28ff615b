"""Which of the issue-11 kernels runs a call, and launching it where it can run.

Two strategies join ``interp_matmul``'s "combine" and "rowscaled":

* ``"swapab"``: the Gluon swap-AB register-combine kernel (``swapab_gluon``) on a Hopper
  GPU; wherever Gluon cannot run (the interpreter, another GPU, a Triton without Gluon,
  fp32, strides TMA cannot address, DAWIN_FAST_GLUON unset) its plain-Triton twin
  (``swapab_twin``) with the same tiling and schedule (fp32 on a GPU: ``TWIN_FP32``'s);
* ``"epilogue"``: the epilogue-scaled multi-GEMM (``epilogue_scaled``), anywhere (fp32 on
  a GPU: its fp32 configs);
* ``"wstat"`` (issue 24): the weight-stationary Gluon kernel (``wstat_gluon``) for large
  groups, where its resident tile fits shared memory (``fused_configs.wstat_fits``: K <=
  1280); elsewhere (K too large, fp32, no Gluon, the interpreter) its plain-Triton twin
  (``wstat_twin``), which only an explicit strategy reaches.

Every kernel and config ``launch`` can run on a GPU, the twin included, is compiled for
sm_90a on Triton 3.6 and 3.8 by the compile gate (``compile_gate``; each kernel module's
``compile_variants``), and ``tests/kernels/test_dispatch.py`` checks that the configs
routed here are the gated ones.

``choose`` is the default rule for CUDA fp16/bf16 calls that the Gluon kernel can run:
every candidate (each swap-AB config, the epilogue kernel, each weight-stationary config
that fits this K) is costed by the traffic model
(``cost_model``) for (rows per group, G, M, N, K) and the cheapest wins. Every such
choice is the model's, not a measurement: no GPU has timed these kernels yet. Elsewhere
``choose`` returns None and ``interp_matmul`` keeps its measured rule for the old kernels.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from . import arch, cost_model
from .common import use_ieee
from .configs import interpreting
from .epilogue_scaled import epilogue_scaled_matmul
from .fused_configs import (
    EPILOGUE_CONFIGS,
    SWAPAB_CONFIGS,
    TWIN_SPILLS_OFF_HOPPER,
    WSTAT_CONFIGS,
    epilogue_config,
    epilogue_fits,
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

NEW_STRATEGIES = ("swapab", "epilogue", "wstat")

#: The Gluon kernel runs only where DAWIN_FAST_GLUON=1 is set. Its numerics have never
#: run (Gluon has no interpreter, and no GPU session has checked it yet: issue 12), so it
#: is opt-in until the GPU tests (tests/kernels/test_new_kernels.py, which call it
#: directly) pass on an H100. Without it, "swapab" runs the twin and the default rule
#: ignores the new kernels.
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
    """Model predictions for every candidate, cheapest first (groups of equal length)."""
    case = cost_model.Case("", (max(num_rows // num_groups, 1),), num_models, n_dim, k_dim,
                              repeat=num_groups)
    out = [Choice("swapab", c.name, cost_model.swapab(case, c).seconds)
           for c in SWAPAB_CONFIGS]
    out += [Choice("epilogue", c.name, cost_model.epilogue(case, c).seconds)
            for c in EPILOGUE_CONFIGS]
    # Only where the resident tile fits in shared memory (16-bit: the Gluon kernel's types).
    out += [Choice("wstat", c.name, cost_model.wstat(case, c).seconds)
            for c in WSTAT_CONFIGS if wstat_fits(c, k_dim)]
    return sorted(out, key=lambda c: c.predicted_s)


def choose(num_rows: int, num_groups: int, num_models: int, n_dim: int, k_dim: int,
           target: Target) -> Choice | None:
    """The new kernel (and config) for a call, or None to keep the old kernels' rule.

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
    fitting = [c.config for c in ranked if c.strategy == strategy
               and (strategy != "epilogue" or epilogue_fits(c.config, dtype, limit))]
    if not fitting and strategy == "wstat":
        return min(WSTAT_CONFIGS, key=lambda c: c.block_n).name
    if not fitting:
        raise ValueError(f"{strategy}: no config fits {limit} B of shared memory")
    return fitting[0]


def candidates(num_rows: int, num_groups: int, num_models: int, n_dim: int, k_dim: int,
               dtype: torch.dtype, target: Target, factor: float) -> list[Choice]:
    """The issue-11 kernels' configs worth timing on this target: the traffic model's
    ranking (a Hopper model: a prior and a pruner, not a prediction elsewhere), cut at
    ``factor`` times its best, without configs that do not fit the device's shared
    memory. Off Hopper without the epilogue kernel: with pointer loads and mma.sync every
    16-bit and TF32 config the gate built there spills 8-36 B (``kernels/NOTES.md``); an
    explicit strategy="epilogue" still runs there. Empty off CUDA, for fp32 (only an
    explicit strategy sends fp32 there) and for empty calls."""
    if not (target.cuda and target.half) or num_rows == 0:
        return []
    groups = min(max(num_groups, 1), num_rows)
    ranked = [c for c in _costed(num_rows, groups, num_models, n_dim, k_dim)
              if (c.strategy != "epilogue" or (
                  target.hopper and epilogue_fits(c.config, dtype, target.smem_limit)))
              and (target.hopper or c.config not in TWIN_SPILLS_OFF_HOPPER)
              # the model's wstat is the Gluon kernel; its twin is a correctness fallback
              and (c.strategy != "wstat" or target.gluon)]
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
