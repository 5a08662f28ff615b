"""``interp_linear``: the public fused-interpolation linear op.

Contract::

    y[r] = x[r] @ (sum_i coeffs[g, i] * weight[i])^T + sum_i coeffs[g, i] * bias[i]

for every row r of group g, where group g holds rows ``offsets[g] .. offsets[g+1]-1``.
Interpolation and accumulation in float32, output in x's dtype (fp32, fp16 or bf16).

Backends: CUDA tensors run the Triton kernels; CPU tensors run a pure-PyTorch
implementation of the same contract, or the Triton kernels through the interpreter when
``TRITON_INTERPRET=1``. ``use_backend`` forces one (tests use it to run both).

The op is a ``torch.library`` custom op (``torch.ops.dawin_fast.interp_linear``), so
``torch.compile`` traces it as one node. Autograd: gradients flow to ``x`` (the same op on
the transposed weights) and ``coeffs`` (``coeff_grad``: per-row or per-group, picked by a
cost model); asking for gradients of ``weight`` or ``bias`` raises (the stacked weights
are frozen).

One-hot calls: when every coefficient row is one-hot (DaWin's expert passes: the batch
repeated M times under the rows of eye(M); or a single model), there is nothing to
interpolate, so ``interp_linear`` runs each group through its own model's weight with
``F.linear``'s cuBLAS GEMM and never enters the fused kernels. One-hotness comes out of
the value check's single host sync (``check_values`` returns a ``OneHot``), or from a
routing validated once per forward (``dawin_fast.nn.Routing``), passed as ``one_hot=``:
no extra synchronisation.

This module holds the custom op and its autograd, the backend and strategy switches, the
Triton path's plan and the reports (``kernel_choice``, ``predicted_times``); the input
checks are ``op_checks``, the PyTorch path and its cost model ``torch_path``, the
coefficient gradients ``coeff_grads``. Their public names are importable from here.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from . import kernels, measured, verify
from .coeff_grads import GRAD_STRATEGIES, coeff_grad, coeff_grad_strategy  # noqa: F401
from .kernels import planning
from .op_checks import (  # noqa: F401  (the checks' public names, re-exported)
    SUPPORTED_DTYPES,
    OneHot,
    _coeff_summary,
    _is_capturing,
    _is_fake,
    _validated,
    check_bounds,
    check_coeff_values,
    check_inputs,
    check_values,
    skip_value_checks,
)
from .torch_path import (  # noqa: F401  (the PyTorch path's public names, re-exported)
    CPU_MEASURE_FACTOR,
    PATH_STRATEGIES,
    _cpu_key,
    _measured_cpu_strategy,
    cpu_strategy,
    interp_linear_torch,
    per_group_cheaper,
)

BACKENDS = ("auto", "triton", "torch")
#: The Triton kernel strategies ``use_strategy`` can force (``kernels.interp_matmul``).
KERNEL_STRATEGIES = tuple(kernels.STRATEGIES)

_state = threading.local()


def _backend() -> str:
    return getattr(_state, "backend", "auto")


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Force the backend of ``interp_linear`` in this thread.

    ``"auto"`` (default): Triton for CUDA tensors; for CPU tensors the PyTorch path, or
    the Triton interpreter when ``TRITON_INTERPRET=1``. ``"triton"``: always the Triton
    kernels (CPU tensors need ``TRITON_INTERPRET=1``). ``"torch"``: always the PyTorch path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    previous = _backend()
    _state.backend = backend
    try:
        yield
    finally:
        _state.backend = previous


def _strategy() -> str | None:
    return getattr(_state, "strategy", None)


@contextlib.contextmanager
def use_strategy(strategy: str | None) -> Iterator[None]:
    """Force the Triton kernel strategy of ``interp_linear`` calls in this thread.

    One of ``KERNEL_STRATEGIES`` ("combine", "rowscaled", "swapab", "epilogue", "wstat"),
    or None for the default rule. For benchmarks and tuning: it applies only where the Triton
    kernels run (not the PyTorch path, not one-hot calls), to forward calls made in this
    thread (autograd's backward runs elsewhere), and a strategy that cannot run a call
    raises there (e.g. "combine" with no config that fits in shared memory). On a Hopper
    GPU a forced "rowscaled" (fp16/bf16/TF32) runs the "epilogue" kernel, with a warning
    that says why (its register-A wgmma hazard: ``kernel_choice`` reports it).
    """
    names = kernels.registry.names()  # a strategy registered later is forced the same way
    if strategy is not None and strategy not in names:
        raise ValueError(f"strategy must be one of {names} or None, got {strategy!r}")
    previous = _strategy()
    _state.strategy = strategy
    try:
        yield
    finally:
        _state.strategy = previous


def kernel_choice(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor) -> str:
    """What ``interp_linear(x, weight, coeffs, ...)`` launches here, for reports.

    "torch:loop" or "torch:rowscaled" (the PyTorch path), "combine", "rowscaled",
    "swapab:<config> (Gluon)" or "swapab:<config> (twin)", "epilogue:<config>",
    "wstat:<config> (Gluon)" or "wstat:<config> (twin)" ("... (interpreter)" under
    ``TRITON_INTERPRET=1``; "... (rowscaled rerouted: register-A hazard on sm_90)" for a
    "rowscaled" on Hopper), under this thread's backend and ``use_strategy``, followed by
    how it was chosen: " [measured]" (a measured choice is cached for this call's key,
    ``dawin_fast.measured``), " [model]" (the model's choice: measuring is off, or the
    first call has not measured yet, or the model left one candidate) or " [forced]"
    (``use_strategy``); "torch:<strategy> [every kernel failed verification]" where the
    verifier's cached verdicts (``dawin_fast.verify``) exclude every candidate. Ignores
    the one-hot shortcut (one-hot rows run cuBLAS); on the PyTorch path every group counts
    as non-empty.
    """
    rows = x.reshape(-1, x.shape[-1])
    num_rows = rows.shape[0]
    num_models = weight.shape[0]
    num_groups = coeffs.shape[0]
    if not _use_triton(rows):
        prior = cpu_strategy(num_rows, num_groups, num_models)
        cached = measured.lookup(measured.cpu_name(), _cpu_key(rows, weight, num_groups))
        if measured.enabled() and cached is not None:
            return f"torch:{cached} [measured]"
        return f"torch:{prior} [model]"
    plan = _plan(rows, weight, num_groups, lookup_only=True)
    if plan is None:
        prior = cpu_strategy(num_rows, num_groups, num_models)
        return f"torch:{prior} [every kernel failed verification]"
    return plan.describe()


def predicted_times(group_rows: int, num_groups: int, num_models: int, n_dim: int,
                    k_dim: int) -> dict:
    """Traffic-model predictions (``kernels/cost_model.py``: a Hopper model of 16-bit
    calls, H200 ceilings; predictions, not measurements) for ``num_groups`` groups of
    ``group_rows`` rows.

    Seconds of cuBLAS on one pre-merged weight over the same rows (``cublas_s``), and of
    the cheapest config of each fused design (``swapab_s``/``epilogue_s``, with
    ``*_config`` and ``*_bound``, what limits it); the ceilings used (``device``,
    ``hbm_bytes_per_s``).
    """
    from .kernels import cost_model

    case = cost_model.Case("", (group_rows,), num_models, n_dim, k_dim, repeat=num_groups)
    out = dict(cublas_s=cost_model.cublas(case).seconds, device=cost_model.DEVICE.name,
               hbm_bytes_per_s=cost_model.DEVICE.hbm_bytes_per_s)
    for design, (config, pred) in cost_model.best(case).items():
        out.update({f"{design}_s": pred.seconds, f"{design}_config": config,
                    f"{design}_bound": pred.bound})
    return out


def clear_dispatch_cache(disk: bool = True) -> None:
    """Forget the measured dispatch's choices (in memory, and on disk unless ``disk`` is
    False): the next call of each key measures again. ``DAWIN_FAST_MEASURE=0`` or
    ``set_measured_dispatch(False)`` keeps the model's choices instead."""
    measured.clear(disk)


def set_measured_dispatch(enabled: bool | None) -> None:
    """Measure strategy choices (True), keep the model's (False), or follow
    ``DAWIN_FAST_MEASURE`` (None, the default: on unless "0")."""
    measured.set_enabled(enabled)


def set_verification(enabled: bool | None) -> None:
    """Verify each kernel strategy and config on the device before the dispatch uses it
    (True), trust them unverified (False), or follow ``DAWIN_FAST_VERIFY`` (None, the
    default: on unless "0"). ``dawin_fast.verify``."""
    verify.set_verification(enabled)


def clear_verdicts(disk: bool = True) -> None:
    """Forget the verifier's verdicts (in memory, and on disk unless ``disk`` is False):
    every kernel is verified again at its next use."""
    verify.clear(disk)


@functools.lru_cache(maxsize=4096)
def _gpu_key(call: planning.Call) -> str:
    """The measured dispatch's key of a call (its facts, rows and groups bucketed)."""
    return (f"{str(call.dtype).removeprefix('torch.')} M={call.num_models} N={call.n_dim} "
            f"K={call.k_dim} rows~{measured.bucket(call.num_rows)} "
            f"groups~{measured.bucket(call.num_groups)} aligned={call.aligned} "
            f"ieee={call.ieee} gluon={call.target.gluon}")


def _gpu_device(x: torch.Tensor) -> str:
    return verify.cuda_device_name(x.device)


def _compiled_kernels(x: torch.Tensor) -> bool:
    """Whether a call runs compiled kernels on a GPU (what the measured dispatch times)."""
    return x.is_cuda and not kernels.interpreting()


def _choice_name(strategy: str, config: str | None) -> str:
    return strategy if config is None else f"{strategy}:{config}"


#: Strategies from the plainest (plain Triton, no wgmma register operand, no TMA) to the
#: most involved: the order in which the verifier's fallbacks are tried after the model's
#: pick.
PLAINEST_FIRST = ("combine", "rowscaled", "epilogue", "swapab", "wstat")
#: What ``_gpu_choice`` returns when no kernel may serve a call: the PyTorch path does.
TORCH_PATH = "torch"


def _plan(x: torch.Tensor, weight: torch.Tensor, num_groups: int,
          coeffs: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
          bias: torch.Tensor | None = None, lookup_only: bool = False) -> planning.Plan | None:
    """The plan of a Triton-path call: its facts read once (``planning.facts``), then the
    forced strategy (``use_strategy``), the measured or verified choice (``_gpu_choice``)
    or the model's. None: every kernel failed verification, the PyTorch path serves."""
    call = planning.facts(x, weight, num_groups)
    forced = _strategy()
    if forced is not None:
        return planning.plan(call, forced)
    if measured.enabled() or verify.enabled():
        strategy, config, was_measured = _gpu_choice(x, weight, num_groups, coeffs, offsets,
                                                     bias, lookup_only, call=call)
        if strategy == TORCH_PATH:
            return None
        if was_measured:
            return planning.plan(call, strategy, config, "measured")
        model = planning.plan(call)
        if (strategy, config) != (model.strategy, model.config):  # the pick failed verification
            return planning.plan(call, strategy, config, "model")
        return model
    return planning.plan(call)


def _gpu_choice(x: torch.Tensor, weight: torch.Tensor, num_groups: int,
                coeffs: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, lookup_only: bool = False,
                call: planning.Call | None = None) -> tuple[str, str | None, bool]:
    """(strategy, config, measured) of a CUDA call with no forced strategy: the model's
    candidates (``planning.candidates``) timed once per key (``measured.choose``), the
    model's pick where measuring is off, impossible (CUDA-graph capture: a cached choice
    still applies) or ``lookup_only`` (``kernel_choice``). With verification on
    (``dawin_fast.verify``) only verified candidates are chosen or timed; strategy
    ``TORCH_PATH`` when every one failed. ``call``: the call's facts, when the caller has
    read them."""
    if call is None:
        call = planning.facts(x, weight, num_groups)
    if not _compiled_kernels(x) or x.shape[0] == 0 or weight.shape[1] == 0 or x.shape[1] == 0:
        prior = planning.plan(call)
        return prior.strategy, prior.config, False
    cands = planning.candidates(call)
    prior = cands[0]
    cands = [prior, *sorted(cands[1:], key=lambda c: PLAINEST_FIRST.index(c[0])
                            if c[0] in PLAINEST_FIRST else len(PLAINEST_FIRST))]
    by_name = {_choice_name(*c): c for c in cands}
    device, key = _gpu_device(x), _gpu_key(call)
    if lookup_only:
        return _looked_up(device, key, by_name, prior)

    def launcher(strategy: str, config: str | None):
        def launch(out: torch.Tensor) -> None:
            kernels.interp_matmul(x, weight, coeffs, offsets, bias, strategy=strategy,
                                  config=config, out=out, call=call)
        return launch

    launches = {name: launcher(*c) for name, c in by_name.items()}
    scratch: list[torch.Tensor] = []

    def runner(launch):
        def run():
            if not scratch:  # allocated only when measuring
                scratch.append(torch.empty((x.shape[0], weight.shape[1]), dtype=x.dtype,
                                           device=x.device))
            launch(scratch[0])
        return run

    runs = {name: runner(launch) for name, launch in launches.items()}
    capturing = _is_capturing(x) or torch.compiler.is_compiling()
    screen = _screen(x, weight, coeffs, offsets, bias, device, key, launches,
                     can_run=not capturing) if verify.enabled() else None
    choice, was_measured = measured.choose(device, key, runs, _choice_name(*prior),
                                           torch_device=x.device,
                                           can_measure=not capturing, screen=screen)
    if choice is None:
        return (*_unverified_fallback(x, weight, num_groups, device, key, cands, capturing),
                False)
    return (*by_name[choice], was_measured)


# ----------------------------------------------------- verification call sites (verify.py)


def _call_label(x: torch.Tensor, weight: torch.Tensor, num_groups: int) -> str:
    num_models, n_dim, k_dim = weight.shape
    return (f"{str(x.dtype).removeprefix('torch.')} x[{x.shape[0]}, {k_dim}] "
            f"W[{num_models}, {n_dim}, {k_dim}] {num_groups} groups")


def _screen(x, weight, coeffs, offsets, bias, device, key, launches, can_run):
    """The verifier's screen of one call: candidates run on its own tensors, held to the
    merged-weight fp32 reference."""
    from .kernels.common import use_ieee

    return verify.Screen(device, key, launches,
                         lambda: verify.reference_bound(x, weight, coeffs, offsets, bias,
                                                        tf32=not use_ieee(x.dtype)),
                         (x.shape[0], weight.shape[1]), x.dtype, x.device,
                         _call_label(x, weight, coeffs.shape[0]), can_run=can_run)


def _unverified_fallback(x, weight, num_groups, device, key, cands, capturing):
    """No candidate passed. Eager: every one failed, the PyTorch path serves. Under capture
    nothing was verified for this call (and the PyTorch path reads offsets on the host,
    which capture forbids): the plainest candidate runs unverified, said once."""
    label = _call_label(x, weight, num_groups)
    if capturing:
        plain = min(cands, key=lambda c: PLAINEST_FIRST.index(c[0])
                    if c[0] in PLAINEST_FIRST else len(PLAINEST_FIRST))
        verify.warn_once(device, key, "capture", (
            f"dawin_fast: no kernel is verified on {device} for {label}, and none can be "
            f"verified inside CUDA-graph capture or torch.compile tracing: running "
            f"{_choice_name(*plain)} unverified (run the call once eagerly first)"))
        return plain
    verify.warn_once(device, key, "all failed", (
        f"dawin_fast: every fused kernel candidate failed verification on {device} for "
        f"{label}: the PyTorch path serves these calls"))
    return TORCH_PATH, None


def _looked_up(device, key, by_name, prior):
    """``kernel_choice``'s view: the measured choice or the first candidate the cached
    verdicts do not exclude (nothing is run)."""
    cached = measured.lookup(device, key) if measured.enabled() else None

    def excluded(name: str) -> bool:
        if not verify.enabled():
            return False
        verdict = verify.lookup(device, key, name)
        return verdict is not None and not verdict.passed

    if cached in by_name and not excluded(cached):
        return (*by_name[cached], True)
    for name, cand in by_name.items():
        if not excluded(name):
            return (*cand, False)
    return TORCH_PATH, None, False


def _use_triton(x: torch.Tensor) -> bool:
    backend = _backend()
    if backend == "torch":
        return False
    if x.is_cuda:
        return True
    # CPU tensors: Triton only through the interpreter, whose tl.dot returns garbage for
    # bf16 (Triton 3.8), so bf16 stays on the PyTorch path.
    usable = kernels.interpreting() and x.dtype != torch.bfloat16
    if backend == "triton" and not usable:
        raise RuntimeError(
            "interp_linear: backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 and "
            f"fp32/fp16 inputs (the interpreter's bf16 dot is broken), got {x.dtype}"
        )
    return usable


def one_hot_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   plan: OneHot) -> torch.Tensor:
    """Rows of one-hot groups: each run of rows through its own model's ``nn.Linear``.

    cuBLAS (``F.linear``'s own ``addmm``/``mm``, written in place), no interpolation, no
    fused kernel, one GEMM per non-empty group: M for an expert pass, 1 for a single model.
    Each group equals ``F.linear(x_group, weight[m], bias[m])`` bit for bit (a batched
    ``torch.bmm``, or one GEMM over merged groups, would round differently). ``x`` is
    [T, K].
    """
    runs = plan.runs()
    if len(runs) == 1:
        model = runs[0][0]
        return F.linear(x, weight[model], None if bias is None else bias[model])
    if not runs:
        return x.new_empty((x.shape[0], weight.shape[1]))
    if torch.is_grad_enabled() and x.requires_grad:  # out= has no autograd: concatenate
        return torch.cat([F.linear(x[start:end], weight[model],
                                   None if bias is None else bias[model])
                          for model, start, end in runs])
    out = x.new_empty((x.shape[0], weight.shape[1]))
    for model, start, end in runs:
        if bias is None:
            torch.mm(x[start:end], weight[model].t(), out=out[start:end])
        else:
            torch.addmm(bias[model], x[start:end], weight[model].t(), out=out[start:end])
    return out


def _one_hot_allowed(weight, coeffs, bias) -> bool:
    """The one-hot path has no gradient for coeffs and would give weights one: when either
    is asked for, the fused op runs (and computes or refuses it)."""
    if not torch.is_grad_enabled():
        return True
    return not (coeffs.requires_grad or weight.requires_grad
                or (bias is not None and bias.requires_grad))


# ---------------------------------------------------------------------------- custom op


@torch.library.custom_op("dawin_fast::interp_linear", mutates_args=())
def _interp_linear_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    if _use_triton(x):
        coeffs = coeffs.float()
        plan = _plan(x, weight, coeffs.shape[0], coeffs, offsets, bias)
        if plan is None:  # every kernel failed verification here
            return interp_linear_torch(x, weight, coeffs, offsets, bias)
        # the plan's own key: the strategy and config asked for (none for the model's own
        # pick; a forced strategy's config is its default)
        strategy = plan.asked
        config = None if plan.how == "forced" or plan.asked is None else plan.config
        return kernels.interp_matmul(x, weight, coeffs, offsets, bias, strategy=strategy,
                                     config=config, call=plan.call)
    return interp_linear_torch(x, weight, coeffs, offsets, bias)


@_interp_linear_op.register_fake
def _(x, weight, coeffs, offsets, bias):
    return x.new_empty((x.shape[0], weight.shape[1]))


def _setup_context(ctx, inputs, output):
    x, weight, coeffs, offsets, bias = inputs
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise RuntimeError(
            "interp_linear computes gradients for x and coeffs only; weight/bias require "
            "grad. Freeze them (requires_grad_(False)) or run under torch.no_grad()."
        )
    ctx.save_for_backward(x, weight, coeffs, offsets, bias)


def _backward(ctx, grad_out):
    x, weight, coeffs, offsets, bias = ctx.saved_tensors
    grad_x = grad_coeffs = None
    if ctx.needs_input_grad[0]:
        # dx = dy @ W_g for each group: the same op with weight^T = [M, K, N].
        grad_x = _interp_linear_op(grad_out, weight.transpose(1, 2), coeffs, offsets, None)
    if ctx.needs_input_grad[2]:
        grad_coeffs = coeff_grad(x, grad_out, weight, coeffs, offsets, bias).to(coeffs.dtype)
    return grad_x, None, grad_coeffs, None, None


_interp_linear_op.register_autograd(_backward, setup_context=_setup_context)


def interp_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    one_hot: OneHot | None = None,
) -> torch.Tensor:
    """Grouped linear layer on interpolated weights, fused: no merged weight in memory.

    Args:
        x: [..., K] input rows (leading dims flattened like ``F.linear``), fp32/fp16/bf16.
            Rows ``offsets[g] .. offsets[g+1]-1`` of the flattened x form group g.
        weight: [M, N, K] stacked ``nn.Linear`` weights of M models, x's dtype.
        coeffs: [G, M] interpolation coefficients, any real values (computed in float32).
        offsets: [G+1] int32/int64, starting at 0, non-decreasing, ending at the row count.
            Empty groups are allowed.
        bias: [M, N] stacked biases, or None.
        one_hot: the ``OneHot`` of these coeffs and offsets when the caller already knows
            every row is one-hot (``Routing.one_hot_for``); found by the value check
            otherwise. One-hot calls run each group's own weight through cuBLAS.

    Returns:
        [..., N] in x's dtype: ``x[r] @ (sum_i c[g,i] W_i)^T + sum_i c[g,i] b_i``.
    """
    checked = check_inputs(x, weight, coeffs, offsets, bias)
    leading = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    plan = one_hot if one_hot is not None else checked
    if plan is not None and _one_hot_allowed(weight, coeffs, bias):
        if len(plan.models) != coeffs.shape[0] or plan.bounds[-1] != rows.shape[0]:
            raise ValueError(f"interp_linear: one_hot is for {len(plan.models)} groups over "
                             f"{plan.bounds[-1]} rows, the call has {coeffs.shape[0]} groups "
                             f"over {rows.shape[0]} rows")
        y = one_hot_linear(rows, weight, bias, plan)
    else:
        y = _interp_linear_op(rows, weight, coeffs, offsets, bias)
    return y.reshape(*leading, weight.shape[1])
