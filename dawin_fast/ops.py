"""``interp_linear``: the public fused-interpolation linear op.

Contract (DESIGN §2)::

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
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from . import kernels, measured, verify

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("auto", "triton", "torch")
#: The Triton kernel strategies ``use_strategy`` can force (``kernels.interp_matmul``).
KERNEL_STRATEGIES = tuple(kernels.STRATEGIES)

_state = threading.local()


def _backend() -> str:
    return getattr(_state, "backend", "auto")


def _value_checks_enabled() -> bool:
    return getattr(_state, "value_checks", True)


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
    if strategy is not None and strategy not in KERNEL_STRATEGIES:
        raise ValueError(f"strategy must be one of {KERNEL_STRATEGIES} or None, got {strategy!r}")
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
    from .kernels import dispatch
    from .kernels.common import use_ieee

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
    target = dispatch.target_for(rows, weight)
    strategy, config, how = _strategy(), None, "forced"
    if strategy is None:
        strategy, config, was_measured = _gpu_choice(rows, weight, num_groups, lookup_only=True)
        how = "measured" if was_measured else "model"
        if strategy == TORCH_PATH:
            prior = cpu_strategy(num_rows, num_groups, num_models)
            return f"torch:{prior} [every kernel failed verification]"
    served = dispatch.served_by(strategy, target, rows.dtype, use_ieee(rows.dtype))
    note = f" ({strategy} rerouted: register-A hazard on sm_90)" if served != strategy else ""
    strategy = served
    if strategy not in dispatch.NEW_STRATEGIES:
        return f"{strategy} [{how}]"
    if kernels.interpreting():  # one pinned small config per kernel
        return f"{strategy} (interpreter){note} [{how}]"
    if config is None:
        config = dispatch.best_config(strategy, num_rows, num_groups, num_models,
                                      weight.shape[1], rows.shape[1], rows.dtype,
                                      target.smem_limit)
    if strategy == "swapab":
        return f"swapab:{config} ({'Gluon' if target.gluon else 'twin'}) [{how}]"
    if strategy == "wstat":
        gluon = dispatch.wstat_on_gluon(target.gluon, rows, weight, config)
        return f"wstat:{config} ({'Gluon' if gluon else 'twin'}) [{how}]"
    return f"epilogue:{config}{note} [{how}]"


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


def _gpu_key(x: torch.Tensor, weight: torch.Tensor, num_groups: int) -> str:
    from .kernels import dispatch
    from .kernels.common import use_ieee
    from .kernels.interp_matmul import call_aligned

    num_models, n_dim, k_dim = weight.shape
    target = dispatch.target_for(x, weight)
    return (f"{str(x.dtype).removeprefix('torch.')} M={num_models} N={n_dim} K={k_dim} "
            f"rows~{measured.bucket(x.shape[0])} groups~{measured.bucket(num_groups)} "
            f"aligned={call_aligned(x, weight)} ieee={use_ieee(x.dtype)} gluon={target.gluon}")


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


def _gpu_choice(x: torch.Tensor, weight: torch.Tensor, num_groups: int,
                coeffs: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, lookup_only: bool = False
                ) -> tuple[str, str | None, bool]:
    """(strategy, config, measured) of a CUDA call with no forced strategy: the model's
    candidates (``kernels.candidates``) timed once per key (``measured.choose``), the
    model's pick where measuring is off, impossible (CUDA-graph capture: a cached choice
    still applies) or ``lookup_only`` (``kernel_choice``). With verification on
    (``dawin_fast.verify``) only verified candidates are chosen or timed; strategy
    ``TORCH_PATH`` when every one failed."""
    cands = kernels.candidates(x, weight, num_groups)
    prior = cands[0]
    if not _compiled_kernels(x) or x.shape[0] == 0 or weight.shape[1] == 0 or x.shape[1] == 0:
        return (*prior, False)
    cands = [prior, *sorted(cands[1:], key=lambda c: PLAINEST_FIRST.index(c[0])
                            if c[0] in PLAINEST_FIRST else len(PLAINEST_FIRST))]
    by_name = {_choice_name(*c): c for c in cands}
    device, key = _gpu_device(x), _gpu_key(x, weight, num_groups)
    if lookup_only:
        return _looked_up(device, key, by_name, prior)

    def launcher(strategy: str, config: str | None):
        def launch(out: torch.Tensor) -> None:
            kernels.interp_matmul(x, weight, coeffs, offsets, bias, strategy=strategy,
                                  config=config, out=out)
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


@contextlib.contextmanager
def skip_value_checks() -> Iterator[None]:
    """Skip the checks that read tensor *values* (offsets, finiteness of coeffs).

    Those checks synchronise with the GPU. Modules that validated their routing once
    (``dawin_fast.nn.Routing``) run their layers inside this context. Shape, dtype and
    device checks always run.
    """
    previous = _value_checks_enabled()
    _state.value_checks = False
    try:
        yield
    finally:
        _state.value_checks = previous


# ----------------------------------------------------------------------------- checks


def check_inputs(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
) -> OneHot | None:
    """Raise a ``ValueError``/``TypeError`` naming the first violated rule of the contract.

    Shape, dtype and device rules always; value rules (offsets start at 0, never
    decrease, end at the row count; coeffs finite) unless ``skip_value_checks`` is active,
    the tensors are fake (tracing) or a CUDA graph is being captured. Under
    ``torch.compile`` the value rules become asserts inside the graph (no host sync, no
    graph break): the same messages, raised as ``RuntimeError`` when the graph runs (on a
    GPU as a device-side assert). Returns the eager value check's ``OneHot`` (None when
    the rows are not all one-hot, or when values were not checked on the host).
    """
    _check_metadata(x, weight, coeffs, offsets, bias)
    if not _value_checks_enabled() or _is_fake(x) or _is_capturing(x) or _is_meta(
            coeffs, offsets):
        return None
    if torch.compiler.is_compiling():
        _assert_values(math.prod(x.shape[:-1]), coeffs, offsets)
        return None
    return check_values(math.prod(x.shape[:-1]), coeffs, offsets)


def _check_metadata(x, weight, coeffs, offsets, bias) -> None:
    for name, t in (("x", x), ("weight", weight), ("coeffs", coeffs), ("offsets", offsets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"interp_linear: {name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(
            f"interp_linear: bias must be a torch.Tensor or None, got {type(bias).__name__}"
        )
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"interp_linear: x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("interp_linear: x must have at least 1 dimension [..., K]")
    if weight.dim() != 3:
        raise ValueError(
            f"interp_linear: weight must be [M, N, K] (stacked nn.Linear weights), "
            f"got shape {tuple(weight.shape)}"
        )
    num_models, out_features, in_features = weight.shape
    if num_models < 1:
        raise ValueError("interp_linear: weight must stack at least one model (M >= 1)")
    if weight.dtype != x.dtype:
        raise TypeError(f"interp_linear: weight dtype {weight.dtype} != x dtype {x.dtype}")
    if x.shape[-1] != in_features:
        raise ValueError(
            f"interp_linear: x has {x.shape[-1]} features, weight expects K={in_features}"
        )
    if bias is not None:
        if bias.shape != (num_models, out_features):
            raise ValueError(
                f"interp_linear: bias must be [M, N] = [{num_models}, {out_features}], "
                f"got {tuple(bias.shape)}"
            )
        if bias.dtype != x.dtype:
            raise TypeError(f"interp_linear: bias dtype {bias.dtype} != x dtype {x.dtype}")
    if coeffs.dim() != 2 or coeffs.shape[1] != num_models:
        raise ValueError(
            f"interp_linear: coeffs must be [G, M] with M={num_models}, got {tuple(coeffs.shape)}"
        )
    if not coeffs.is_floating_point():
        raise TypeError(f"interp_linear: coeffs must be floating point, got {coeffs.dtype}")
    if coeffs.shape[0] < 1:
        raise ValueError("interp_linear: coeffs must have at least one group (G >= 1)")
    if offsets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"interp_linear: offsets must be int32 or int64, got {offsets.dtype}")
    if offsets.dim() != 1 or offsets.numel() != coeffs.shape[0] + 1:
        raise ValueError(
            f"interp_linear: offsets must be [G+1] = [{coeffs.shape[0] + 1}] for "
            f"{coeffs.shape[0]} coefficient rows, got shape {tuple(offsets.shape)}"
        )
    tensors = {"weight": weight, "coeffs": coeffs, "offsets": offsets}
    if bias is not None:
        tensors["bias"] = bias
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"interp_linear: {name} is on {t.device}, x is on {x.device}")


@dataclasses.dataclass(frozen=True)
class OneHot:
    """Every coefficient row is one-hot: rows ``bounds[g] .. bounds[g+1]-1`` run model
    ``models[g]`` alone (host ints, known from a value check's one sync)."""

    models: tuple[int, ...]
    bounds: tuple[int, ...]

    def scaled(self, factor: int) -> OneHot:
        """The same groups over ``factor`` rows per sample (a layer's tokens)."""
        return OneHot(self.models, tuple(b * factor for b in self.bounds))

    def runs(self) -> list[tuple[int, int, int]]:
        """(model, first row, end row) of every non-empty group."""
        return [(model, self.bounds[g], self.bounds[g + 1])
                for g, model in enumerate(self.models) if self.bounds[g] < self.bounds[g + 1]]


def _coeff_summary(coeffs: torch.Tensor) -> torch.Tensor:
    """[2 + G] int64 on coeffs' device, no sync: finite, every row one-hot, then each row's
    argmax. A row is one-hot when one entry is exactly 1 and the others exactly 0."""
    ones = coeffs == 1
    one_hot = (ones | (coeffs == 0)).all() & (ones.sum(1) == 1).all()
    flags = torch.stack([torch.isfinite(coeffs).all(), one_hot]).to(torch.int64)
    return torch.cat([flags, ones.to(torch.int8).argmax(1).to(torch.int64)])


def check_coeff_values(coeffs: torch.Tensor, who: str = "interp_linear") -> tuple[int, ...] | None:
    """Raise if coeffs [G, M] are not all finite; return each row's model when every row is
    one-hot, else None. One host sync."""
    finite, one_hot, *models = _coeff_summary(coeffs).tolist()
    if not finite:
        raise ValueError(f"{who}: coeffs contain NaN or infinity")
    return tuple(models) if one_hot else None


def check_values(num_rows: int, coeffs: torch.Tensor, offsets: torch.Tensor) -> OneHot | None:
    """Check offsets (start at 0, non-decreasing, end at ``num_rows``) and finite coeffs.

    Returns a ``OneHot`` when every coefficient row is one-hot, else None; all of it from
    one host sync.
    """
    values = torch.cat([
        (offsets[1:] < offsets[:-1]).any().to(torch.int64).reshape(1),
        _coeff_summary(coeffs), offsets.to(torch.int64),
    ]).tolist()
    decreasing, finite, one_hot = values[:3]
    num_groups = coeffs.shape[0]
    models, bounds = values[3:3 + num_groups], values[3 + num_groups:]
    check_bounds(bounds, num_rows, decreasing=bool(decreasing))
    if not finite:
        raise ValueError("interp_linear: coeffs contain NaN or infinity")
    return OneHot(tuple(models), tuple(bounds)) if one_hot else None


def check_bounds(bounds: list[int], num_rows: int, decreasing: bool | None = None) -> None:
    """The offsets rules on offsets already read to the host (``decreasing``: whether the
    caller found them decreasing, None: compute it here)."""
    if bounds[0] != 0:
        raise ValueError(f"interp_linear: offsets must start at 0, got {bounds[0]}")
    if decreasing is None:
        decreasing = any(b < a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    if decreasing:
        raise ValueError("interp_linear: offsets must be non-decreasing")
    if bounds[-1] != num_rows:
        raise ValueError(f"interp_linear: offsets must end at the row count {num_rows}, "
                         f"got {bounds[-1]}")


def _assert_values(num_rows: int, coeffs: torch.Tensor, offsets: torch.Tensor) -> None:
    """``check_values`` as asserts that ``torch.compile`` traces into the graph: reading
    the values on the host would be a data-dependent branch (a graph break)."""
    torch._assert_async(offsets[0] == 0, "interp_linear: offsets must start at 0")
    torch._assert_async((offsets[1:] >= offsets[:-1]).all(),
                        "interp_linear: offsets must be non-decreasing")
    torch._assert_async(offsets[-1] == num_rows,
                        "interp_linear: offsets must end at the row count")
    torch._assert_async(torch.isfinite(coeffs).all(),
                        "interp_linear: coeffs contain NaN or infinity")


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _is_meta(*tensors: torch.Tensor) -> bool:
    """Meta tensors carry shapes, no values: there is nothing to check (shape propagation)."""
    return any(t.is_meta for t in tensors)


def _is_capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


# ------------------------------------------------------------------------- PyTorch path

# CPU cost model of the PyTorch path, in units of one row through one model's weight in a
# large matmul (N*K multiply-adds). Per-row strategies ("rowscaled" forward, "rowwise"
# coefficient gradient) cost M units per row. Per-group strategies ("loop" forward,
# "pergroup" gradient) cost, per non-empty group, GROUP_COST_PER_MODEL * M +
# GROUP_COST (streaming N*K weights: a merge, or dW_g and its contraction with the M
# weights), plus GROUP_ROW_COST per row (a matmul on a group's few rows runs below peak).
# Fitted on the developer CPU (one thread, fp32, K=768, N=3072, M in {2, 4, 9}, 1 to 100
# rows per group; see docs/kernels.md, "CPU dispatch"): forward 11.2*M + 9 and 1.2 per row, gradient
# 9.3*M + 8 and 1.2 per row.
GROUP_COST_PER_MODEL = 10.0
GROUP_COST = 9.0
GROUP_ROW_COST = 1.2
PATH_STRATEGIES = ("loop", "rowscaled")


#: The PyTorch path measures loop against row-scaled where the cost model above puts them
#: within this factor of each other (elsewhere the model's pick stands): at M = 2 from 17 to
#: 217 rows per group, i.e. around the fitted crossover (36), where one machine's constants
#: may be wrong on another.
CPU_MEASURE_FACTOR = 1.5


def _cpu_costs(num_rows: int, num_groups: int, num_models: int) -> tuple[float, float]:
    """(per-group, per-row) cost of a call by the CPU cost model above."""
    per_group = (num_groups * (GROUP_COST_PER_MODEL * num_models + GROUP_COST)
                 + GROUP_ROW_COST * num_rows)
    return per_group, float(num_models * num_rows)


def per_group_cheaper(num_rows: int, num_groups: int, num_models: int) -> bool:
    """Whether a per-group strategy beats a per-row one by the CPU cost model above."""
    per_group, per_row = _cpu_costs(num_rows, num_groups, num_models)
    return per_group <= per_row


def _cpu_key(x: torch.Tensor, weight: torch.Tensor, num_groups: int) -> str:
    num_models, n_dim, k_dim = weight.shape
    return (f"torch {str(x.dtype).removeprefix('torch.')} M={num_models} N={n_dim} K={k_dim} "
            f"rows~{measured.bucket(x.shape[0])} groups~{measured.bucket(num_groups)} "
            f"{'contiguous' if weight.is_contiguous() else 'strided'}")


def _measured_cpu_strategy(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
                           offsets: torch.Tensor, bias: torch.Tensor | None,
                           num_groups: int) -> str:
    """``cpu_strategy``'s pick, or, where its two costs lie within ``CPU_MEASURE_FACTOR``,
    the faster of loop and row-scaled as measured on this machine at the first call of
    the key (``dawin_fast.measured``: cached in memory and on disk per CPU and versions)."""
    num_rows, num_models = x.shape[0], weight.shape[0]
    prior = cpu_strategy(num_rows, num_groups, num_models)
    if not measured.enabled() or num_groups == 0 or _is_fake(x):
        return prior
    per_group, per_row = _cpu_costs(num_rows, num_groups, num_models)
    if max(per_group, per_row) > CPU_MEASURE_FACTOR * min(per_group, per_row):
        return prior
    scratch: list[torch.Tensor] = []  # allocated only when measuring

    def runner(strategy: str):
        def run():
            if not scratch:
                scratch.append(torch.empty((num_rows, weight.shape[1]), dtype=x.dtype,
                                           device=x.device))
            interp_linear_torch(x, weight, coeffs, offsets, bias, out=scratch[0],
                                strategy=strategy)
        return run

    runs = {s: runner(s) for s in PATH_STRATEGIES}
    choice, _ = measured.choose(measured.cpu_name(), _cpu_key(x, weight, num_groups), runs,
                                prior, torch_device=x.device)
    return choice


def cpu_strategy(num_rows: int, num_groups: int, num_models: int) -> str:
    """The PyTorch path's strategy for ``num_groups`` non-empty groups over ``num_rows``.

    ``"loop"``: per group, merge the weight, then one matmul over its rows.
    ``"rowscaled"``: y = sum_i diag(c_i) x W_i^T, M matmuls over all rows and no merge. Both
    costs scale with N*K, so the choice depends on the rows per group and M only: the loop
    from 36 rows per group at M=2, 18 at M=4, 13 at M=9.
    """
    if num_groups == 0 or per_group_cheaper(num_rows, num_groups, num_models):
        return "loop"
    return "rowscaled"


def interp_linear_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    strategy: str | None = None,
) -> torch.Tensor:
    """Pure-PyTorch implementation of the contract for 2-D ``x`` (the CPU path).

    Two strategies (``cpu_strategy`` picks by rows per group and M; ``strategy`` forces
    one): ``"loop"`` merges one weight per non-empty group and runs one matmul over its
    rows; ``"rowscaled"`` computes y = sum_i diag(c_i) x W_i^T, M matmuls over all rows and
    no merged weight, which wins when groups are a few rows each. Both in float32.
    ``out``: optional [T, N] tensor to write.
    """
    num_rows = x.shape[0]
    num_models, out_features, _ = weight.shape
    if out is None:
        out = torch.empty((num_rows, out_features), dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    coeffs = coeffs.float()
    x32 = x.float()
    bounds = offsets.tolist()
    # Read anyway to loop over the groups: checked here even under skip_value_checks.
    check_bounds(bounds, num_rows)
    groups = [g for g in range(coeffs.shape[0]) if bounds[g + 1] > bounds[g]]
    if strategy is None:
        strategy = _measured_cpu_strategy(x, weight, coeffs, offsets, bias, len(groups))
    if strategy not in PATH_STRATEGIES:
        raise ValueError(f"strategy must be one of {PATH_STRATEGIES}, got {strategy!r}")
    if strategy == "rowscaled":
        lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
        row_coeffs = torch.repeat_interleave(coeffs, lengths, dim=0, output_size=num_rows)
        acc = torch.zeros((num_rows, out_features), dtype=torch.float32, device=x.device)
        for i in range(num_models):
            acc.addmm_(x32 * row_coeffs[:, i : i + 1], weight[i].float().t())
        if bias is not None:
            acc += row_coeffs @ bias.float()
        return out.copy_(acc)
    merge = _Merger(weight)
    for g in groups:
        start, end = bounds[g], bounds[g + 1]
        merged_bias = coeffs[g] @ bias.float() if bias is not None else None
        out[start:end] = torch.nn.functional.linear(x32[start:end], merge(coeffs[g]),
                                                    merged_bias)
    return out


class _Merger:
    """``row -> sum_i row[i] weight[i]`` [N, K] in float32: one GEMV over the flattened
    weights into one reused buffer. Both choices measured on the developer CPU (one
    thread, 3072x768): ``einsum("m,mnk->nk")`` took 6.3 ms at M=2 against 1.7 ms for the
    GEMV, and a fresh 9 MB result per group cost up to 4 ms more in page faults (5.25 vs
    1.15 ms at M=2). The backward's transposed weights (a view) merge untransposed."""

    def __init__(self, weight: torch.Tensor) -> None:
        num_models, rows, cols = weight.shape
        self.transposed = weight.transpose(1, 2).is_contiguous() and not weight.is_contiguous()
        source = weight.transpose(1, 2) if self.transposed else weight
        self.flat = source.reshape(num_models, -1).float()
        self.shape = source.shape[1:]
        self.buffer = torch.empty((1, self.flat.shape[1]), dtype=torch.float32,
                                  device=weight.device)

    def __call__(self, row: torch.Tensor) -> torch.Tensor:
        merged = torch.mm(row[None], self.flat, out=self.buffer).view(self.shape)
        return merged.t() if self.transposed else merged


# Coefficient gradient dc[g, i] = sum_{r in g} <dy_r, W_i x_r + b_i>, two ways:
# "rowwise": M matmuls over all rows (M*T*N*K); "pergroup": dW_g = dy_g^T x_g for every
# group (T*N*K, into one reused buffer), then <dW_g, W_i> (G*M*N*K). On a GPU the same
# cost model decides (not measured there).
GRAD_STRATEGIES = ("rowwise", "pergroup")


def coeff_grad_strategy(num_rows: int, num_groups: int, num_models: int) -> str:
    """``"pergroup"`` where the CPU cost model (``per_group_cheaper``) says it is cheaper:
    the same boundaries as ``cpu_strategy`` (measured crossovers: about 30, 20 and 12 rows
    per group at M = 2, 4, 9)."""
    return "pergroup" if per_group_cheaper(num_rows, num_groups, num_models) else "rowwise"


def coeff_grad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
    strategy: str | None = None,
) -> torch.Tensor:
    """dL/dcoeffs [G, M] (float32) of ``interp_linear`` given dL/dy ``grad_out`` [T, N]."""
    num_groups, num_models = coeffs.shape
    num_rows = x.shape[0]
    lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
    grad = torch.zeros((num_groups, num_models), dtype=torch.float32, device=x.device)
    if num_rows == 0:
        return grad
    dy = grad_out.float()
    x32 = x.float()
    row_group = torch.repeat_interleave(
        torch.arange(num_groups, device=x.device), lengths, output_size=num_rows
    )
    if bias is not None:  # sum_{r in g} <dy_r, b_i> = <sum_{r in g} dy_r, b_i>
        dy_sum = torch.zeros((num_groups, dy.shape[1]), dtype=torch.float32, device=x.device)
        dy_sum.index_add_(0, row_group, dy)
        grad += dy_sum @ bias.float().t()
    if strategy is None:
        # Tracing (fake tensors) cannot read the offsets the per-group path loops over.
        strategy = "rowwise" if _is_fake(x) else coeff_grad_strategy(num_rows, num_groups,
                                                                     num_models)
    if strategy not in GRAD_STRATEGIES:
        raise ValueError(f"strategy must be one of {GRAD_STRATEGIES}, got {strategy!r}")
    if strategy == "rowwise":
        per_row = torch.stack(
            [(dy * (x32 @ weight[i].float().t())).sum(-1) for i in range(num_models)], dim=1
        )
        return grad.index_add_(0, row_group, per_row)
    flat = weight.reshape(num_models, -1).float()  # [M, N*K]
    d_w = torch.empty(weight.shape[1:], dtype=torch.float32, device=x.device)  # reused
    bounds = offsets.tolist()
    for g in range(num_groups):
        start, end = bounds[g], bounds[g + 1]
        if end > start:
            torch.mm(dy[start:end].t(), x32[start:end], out=d_w)
            grad[g] += flat @ d_w.reshape(-1)
    return grad


def _use_triton(x: torch.Tensor) -> bool:
    backend = _backend()
    if backend == "torch":
        return False
    if x.is_cuda:
        return True
    # CPU tensors: Triton only through the interpreter, whose tl.dot returns garbage for
    # bf16 (triton 3.8, DESIGN §3), so bf16 stays on the PyTorch path.
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
        strategy, config = _strategy(), None
        if strategy is None and _compiled_kernels(x) and (measured.enabled()
                                                          or verify.enabled()):
            strategy, config, _ = _gpu_choice(x, weight, coeffs.shape[0], coeffs.float(),
                                              offsets, bias)
        if strategy == TORCH_PATH:  # every kernel failed verification here
            return interp_linear_torch(x, weight, coeffs, offsets, bias)
        return kernels.interp_matmul(x, weight, coeffs.float(), offsets, bias,
                                     strategy=strategy, config=config)
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
