"""A call's plan: its facts gathered once, the kernel and config decided once per key.

``facts(x, weight, num_groups)`` reads everything the decision depends on from the
tensors and the device (``dispatch.target_for`` runs here and nowhere else on a call's
path): sizes, dtype, precision, alignment, the target. The result, a ``Call``, is the
plan's key. ``plan(call)`` returns the ``Plan`` for it: the strategy that launches, its
config, how it was chosen ("model", "measured" or "forced") and why it differs from the
one asked for (a "rowscaled" rerouted on Hopper). Plans are kept per key, so a call whose
key was planned before costs a dictionary lookup; ``interp_matmul`` launches the plan and
``dawin_fast.ops.kernel_choice`` reports ``plan.describe()``.

The rules themselves: ``default_strategy`` (the shape's favourite), ``choose_strategy``
(with the shared-memory fit), ``dispatch.best_config`` (the cost model's config) and
``candidates`` (what the measured dispatch times).
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from . import dispatch, registry
from .common import use_ieee
from .configs import aligned, fitting_configs, interpreting

#: The two kernels the rule below chooses between where the cost model does not apply.
RULE_STRATEGIES = ("combine", "rowscaled")

# Mean rows per group below which "rowscaled" is the default. From H100 probes (bf16,
# M=2): row-scaled beat the combine kernel on every measured case with groups of 50-400
# rows (e.g. ViT-B/32 fc1 per-sample: 0.257 ms vs 0.383 ms). Larger groups were not
# measured; the combine kernel's per-block weight combine amortises over more rows there
# while row-scaled keeps its M x FLOPs, so they default to "combine".
ROWSCALED_MAX_MEAN_ROWS = 512

#: The traffic model's cut: the fused configs it costs within this factor of its best are
#: timed by the measured dispatch (a Hopper model: off Hopper only a coarse prior).
MEASURE_FACTOR = 1.5


@dataclasses.dataclass(frozen=True)
class Call:
    """What a call's decision depends on (the plan's key), read once from its tensors."""

    num_rows: int
    num_groups: int
    num_models: int
    n_dim: int
    k_dim: int
    dtype: torch.dtype
    ieee: bool  #: fp32 with IEEE precision (no TF32)
    aligned: bool  #: K-contiguous operands with 16-element rows (``configs.aligned``)
    target: dispatch.Target
    interpreting: bool  #: TRITON_INTERPRET=1: one pinned small config per kernel


def call_aligned(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a call's K-contiguous operands have 16-element rows (``configs.aligned``)."""
    return (x.stride(1) == 1 and weight.stride(2) == 1 and aligned(
        x.shape[1], (x.stride(0), weight.stride(1), weight.stride(0)),
        (x.data_ptr(), weight.data_ptr())))


def facts(x: torch.Tensor, weight: torch.Tensor, num_groups: int) -> Call:
    """The ``Call`` of x [T, K] and weight [M, N, K] in ``num_groups`` groups."""
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    return Call(num_rows, num_groups, num_models, n_dim, k_dim, x.dtype, use_ieee(x.dtype),
                call_aligned(x, weight), dispatch.target_for(x, weight), interpreting())


def gpu_combine_block_m(num_rows: int, num_groups: int, dtype: torch.dtype) -> int:
    """Row-block height of the combine kernel on a GPU (fixed per call: the schedule
    depends on it). fp32 always 64: its FMA dot spills at 128 rows (compiled.md)."""
    mean_rows = num_rows / max(num_groups, 1)
    return 64 if mean_rows <= 64 or dtype == torch.float32 else 128


def default_strategy(num_rows: int, num_groups: int, num_models: int,
                     n_dim: int | None = None, k_dim: int | None = None,
                     target: dispatch.Target | None = None) -> str:
    """The strategy the call's shape favours (``choose_strategy`` adds the fit check).

    Where the Gluon kernel can run (``target``: CUDA sm_90, fp16/bf16, TMA-addressable)
    the traffic model picks among the fused kernels (``dispatch.choose``: model, not
    measured); elsewhere the rule below.
    """
    if target is not None and n_dim is not None and k_dim is not None:
        choice = dispatch.choose(num_rows, num_groups, num_models, n_dim, k_dim, target)
        if choice is not None:
            return choice.strategy
    if num_rows < ROWSCALED_MAX_MEAN_ROWS * max(num_groups, 1):
        # On Hopper "rowscaled" is served by "epilogue" (dispatch.ROWSCALED_HAZARD); the
        # fp32 IEEE distinction only matters for an explicit rowscaled, so none here.
        return "epilogue" if target is not None and dispatch.rowscaled_hazard(
            target, torch.float16, False) else "rowscaled"
    return "combine"


def autotune_fits(strategy: str):
    """An autotuned strategy's ``Strategy.autotune_fits``: ``fits`` on the call's facts."""
    def fits_call(call: Call) -> bool:
        return fits(strategy, call.num_rows, call.num_groups, call.num_models, call.dtype,
                    call.ieee, call.aligned, call.target.smem_limit)
    return fits_call


def fits(strategy: str, num_rows: int, num_groups: int, num_models: int,
         dtype: torch.dtype, ieee: bool = False, is_aligned: bool = True,
         limit: int | None = None) -> bool:
    """Whether ``strategy`` has a GPU config within ``limit`` bytes of shared memory
    (default: the assumed target's, ``arch.assumed()``) for this call."""
    block_m = gpu_combine_block_m(num_rows, num_groups, dtype) if strategy == "combine" else None
    return bool(fitting_configs(strategy, num_models, dtype, ieee, block_m, is_aligned,
                                limit=limit))


def choose_strategy(num_rows: int, num_groups: int, num_models: int, dtype: torch.dtype,
                    ieee: bool = False, is_aligned: bool = True, n_dim: int | None = None,
                    k_dim: int | None = None, target: dispatch.Target | None = None) -> str:
    """The strategy ``interp_matmul`` uses when none is given: ``default_strategy``'s pick,
    or the other kernel when the pick has no config that fits in shared memory (combine
    runs out from M ~ 100 with 16-bit inputs; row-scaled fits at any M). The fused
    kernels keep their shared memory independent of M (``compiled.md``). The limit is
    ``target``'s (the device's), else the assumed target's (Hopper)."""
    first = default_strategy(num_rows, num_groups, num_models, n_dim, k_dim, target)
    if registry.get(first).modeled:
        return first
    limit = target.smem_limit if target is not None else None
    for strategy in (first, *(s for s in RULE_STRATEGIES if s != first)):
        if fits(strategy, num_rows, num_groups, num_models, dtype, ieee, is_aligned, limit):
            # Never "rowscaled" on Hopper (dispatch.ROWSCALED_HAZARD): its stand-in there.
            return dispatch.served_by(strategy, target, dtype, ieee)
    raise ValueError(f"interp_matmul: no kernel has a config that fits in "
                     f"{limit or 'the'} B of shared memory for M={num_models}, {dtype}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one call launches, and why."""

    call: Call
    asked: str | None  #: the strategy asked for (None: the default rule)
    strategy: str  #: the strategy that launches
    config: str | None  #: a fused strategy's config; None: Triton autotunes
    how: str  #: "model", "measured" or "forced"
    #: Why ``strategy`` is not the one asked for (``dispatch.ROWSCALED_HAZARD``), or "".
    rerouted: str = ""
    #: Why the launch must fail (a forced strategy with no config that fits), or "".
    error: str = ""

    def describe(self) -> str:
        """``kernel_choice``'s report: "combine [model]", "swapab:<config> (Gluon)
        [measured]", "epilogue:<config> (rowscaled rerouted: ...) [forced]", ..."""
        note = f" ({self.asked} rerouted: register-A hazard on sm_90)" if self.rerouted else ""
        if self.config is None:  # autotuned
            return f"{self.strategy} [{self.how}]"
        if self.call.interpreting:  # one pinned small config per kernel
            return f"{self.strategy} (interpreter){note} [{self.how}]"
        implementation = registry.get(self.strategy).implementation(self)
        shown = f" ({implementation})" if implementation else ""
        return f"{self.strategy}:{self.config}{shown}{note} [{self.how}]"


def _decide(call: Call, asked: str | None, config: str | None, how: str) -> Plan:
    target, dtype, ieee = call.target, call.dtype, call.ieee
    if asked is None:
        strategy = choose_strategy(call.num_rows, call.num_groups, call.num_models, dtype,
                                   ieee, call.aligned, call.n_dim, call.k_dim, target)
    else:
        strategy = registry.get(asked).name  # raises for an unknown name
    served = dispatch.served_by(strategy, target, dtype, ieee)
    rerouted = dispatch.ROWSCALED_HAZARD if served != strategy else ""
    error = ""
    spec = registry.get(served)
    if spec.modeled:
        if config is None or served != strategy:
            config = dispatch.best_config(served, call.num_rows, call.num_groups,
                                          call.num_models, call.n_dim, call.k_dim, dtype,
                                          target.smem_limit)
    else:
        config = None  # Triton autotunes it
        if not call.interpreting and not spec.autotune_fits(call):
            error = (f"interp_matmul: strategy {served!r} has no config that fits in "
                     f"{target.smem_limit} B of shared memory for M={call.num_models}, "
                     f"{dtype}; use strategy=None to pick one that does")
    return Plan(call, asked, served, config, how, rerouted, error)


_plans: dict[tuple, Plan] = {}
_plans_lock = threading.Lock()
#: Keys kept (a model has a few dozen distinct layer calls; the oldest go first).
PLANS_KEPT = 4096


def plan(call: Call, strategy: str | None = None, config: str | None = None,
         how: str | None = None) -> Plan:
    """The plan of ``call``, decided at its key's first call, then looked up.

    ``strategy`` (and a fused strategy's ``config``): asked for, chosen ``how``
    ("forced", the default, or "measured"); None: the default rule ("model").
    """
    key = (call, strategy, config, how)
    found = _plans.get(key)
    if found is not None:
        return found
    if how is None:
        how = "model" if strategy is None else "forced"
    decided = _decide(call, strategy, config, how)  # raises (no kernel fits): not kept
    with _plans_lock:
        if len(_plans) >= PLANS_KEPT:
            _plans.pop(next(iter(_plans)))
        _plans[key] = decided
    return decided


def forget() -> None:
    """Drop every kept plan (after changing what a decision depends on, e.g. in tests)."""
    with _plans_lock:
        _plans.clear()
        _candidates.clear()


registry.on_change.append(forget)


_candidates: dict[tuple[Call, float], tuple[tuple[str, str | None], ...]] = {}


def candidates(call: Call, factor: float = MEASURE_FACTOR) -> list[tuple[str, str | None]]:
    """``_rank_candidates``, kept per key like the plans (the measured dispatch asks at
    every call)."""
    found = _candidates.get((call, factor))
    if found is None:
        found = tuple(_rank_candidates(call, factor))
        with _plans_lock:
            if len(_candidates) >= PLANS_KEPT:
                _candidates.pop(next(iter(_candidates)))
            _candidates[(call, factor)] = found
    return list(found)


def _rank_candidates(call: Call, factor: float) -> list[tuple[str, str | None]]:
    """(strategy, config) pairs worth timing for this call on its device, the model's pick
    first (with its config for the fused kernels); then every autotuned kernel with a
    config that fits the device's shared memory (they have no cost model, and Triton
    autotunes their configs), then the fused configs the traffic model keeps
    (``dispatch.candidates``). Config None: the model's or autotune's."""
    prior = plan(call)
    out: list[tuple[str, str | None]] = [(prior.strategy, prior.config)]
    target = call.target
    for spec in registry.autotuned():
        # never "rowscaled" on Hopper (dispatch.ROWSCALED_HAZARD): it is not timed there
        if (dispatch.served_by(spec.name, target, call.dtype, call.ieee) == spec.name
                and spec.autotune_fits(call) and (spec.name, None) not in out):
            out.append((spec.name, None))
    for choice in dispatch.candidates(call.num_rows, call.num_groups, call.num_models,
                                      call.n_dim, call.k_dim, call.dtype, target, factor):
        if (choice.strategy, choice.config) not in out:
            out.append((choice.strategy, choice.config))
    return out
