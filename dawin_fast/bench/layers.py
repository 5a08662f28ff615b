"""Benchmark cases for the fused interpolation linear and the baselines it is judged by.

Used by ``benchmarks/`` (pytest-benchmark) and by ``dawin-fast bench`` (a plain runner).

Every method computes the same thing on the same inputs: rows grouped by ``offsets``,
group g through the interpolation ``sum_i coeffs[g, i] W_i`` of M stacked linears.

Methods:
    fused                 dawin_fast.interp_linear (one launch, no merged weight; its default
                          kernel choice, recorded as ``kernel``)
    fused_<strategy>      the same op with one Triton kernel strategy forced (``use_strategy``):
                          fused_combine, fused_rowscaled, fused_swapab (the Gluon kernel where
                          DAWIN_FAST_GLUON=1 lets it run, else its plain-Triton twin),
                          fused_epilogue. GPU only (on a CPU: only under TRITON_INTERPRET=1,
                          to test the harness)
    premerged             F.linear with one weight merged beforehand (the floor: a plain GEMM;
                          cuBLAS on a GPU, the CPU's BLAS on a CPU)
    materialize_loop      per group: merge the weight (einsum), then F.linear (eager)
    materialize_compiled  the same function under torch.compile(mode="max-autotune"),
                          on a GPU compiled afresh for each case (static shapes)
    einsum_grouped_mm     one einsum into G merged weights, then torch._grouped_mm (sm90 bf16)

Before it is timed, every method's output is compared with a float32 reference (merge in
float32, then F.linear), and its relative error ``||out - ref|| / ||ref||`` is recorded.
On a GPU, times are medians of at least 20 CUDA-event-timed calls after a warm-up, with
the L2 cache flushed before each call (as ``triton.testing.do_bench`` does).

On a GPU the shapes are the real ViT-B/32, B/16 and L/14 layers; on a CPU they shrink to a
toy size so that the harness itself runs (and is tested) anywhere.

Language-model cases (``lm_cases``, ``dawin-fast bench --suite lm``): the Llama-3-8B
projections in prefill (one sequence of 2048 tokens; 8 sequences of 512, one group each)
and in decode (G = 1 ... 256 sequences of one token, one group each, as
``DaWinCausalLM.generate`` runs them), with the traffic model's predictions beside them
(``lm_predictions``, ``render_lm_predictions``: predictions, not measurements).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ..ops import (
    KERNEL_STRATEGIES,
    interp_linear,
    kernel_choice,
    predicted_times,
    skip_value_checks,
    use_backend,
    use_strategy,
)
from . import paired

# width, tokens per image, images per batch for one big group (>= 8k rows, target P1).
VIT_SHAPES = {
    "ViT-B-32": (768, 50, 256),
    "ViT-B-16": (768, 197, 64),
    "ViT-L-14": (1024, 257, 64),
}
LAYERS = ("qkv", "out_proj", "fc1", "fc2")
#: Llama-3-8B projections, (in_features, out_features): fused QKV (32 query heads + 2 x 8
#: KV heads of 128), the attention output, gate and up (two layers of this shape per
#: block, timed once) and down.
LLAMA3_8B = {
    "qkv": (4096, 6144),
    "o_proj": (4096, 4096),
    "gate_up_proj": (4096, 14336),
    "down_proj": (14336, 4096),
}
#: Decode: G sequences of one new token each, one coefficient row (group) per sequence.
DECODE_GROUPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SUITES = ("vit", "lm")
PATTERNS = ("one_group", "clusters3", "per_sample")
#: fused_<strategy> -> the kernel strategy it forces.
STRATEGY_METHODS = {f"fused_{name}": name for name in KERNEL_STRATEGIES}
METHODS = ("fused", *STRATEGY_METHODS, "premerged", "materialize_loop", "materialize_compiled",
           "einsum_grouped_mm")


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    layer: str
    pattern: str
    images: int
    tokens: int
    in_features: int
    out_features: int
    num_models: int = 2
    dtype: torch.dtype = torch.bfloat16
    device: str = "cuda"

    @property
    def rows(self) -> int:
        return self.images * self.tokens

    @property
    def id(self) -> str:
        return (f"{self.model}-{self.layer}-{self.pattern}-M{self.num_models}-"
                f"{self.images}x{self.tokens}")

    @property
    def target(self) -> str | None:
        """The layer target (Hopper, bf16; docs/design.md) this case measures: P1-P4, or None
        (always None for the toy cases of a CPU)."""
        if self.device != "cuda" or self.model not in VIT_SHAPES:
            return None
        if self.pattern == "one_group":
            if self.rows <= 512:
                return "P3"
            if self.rows >= 8192:
                return {2: "P1", 8: "P4"}.get(self.num_models)
        if self.pattern == "per_sample" and self.images == 256 and self.num_models == 2:
            return "P2"
        return None

    def info(self) -> dict:
        """The case's parameters, as stored in every record (for the P1-P6 summary)."""
        return dict(case=self.id, target=self.target, model=self.model, layer=self.layer,
                    pattern=self.pattern, rows=self.rows, images=self.images,
                    tokens=self.tokens, in_features=self.in_features,
                    out_features=self.out_features, num_models=self.num_models,
                    dtype=str(self.dtype).removeprefix("torch."), device=self.device)


def layer_features(layer: str, width: int) -> tuple[int, int]:
    """(in_features, out_features) of an open_clip ViT layer."""
    return {
        "qkv": (width, 3 * width),
        "out_proj": (width, width),
        "fc1": (width, 4 * width),
        "fc2": (4 * width, width),
    }[layer]


def gpu_cases() -> list[Case]:
    """Every ViT layer case of the targets, the target cases first (P1, P2, P3, P4), then the
    three-cluster cases that no target covers: a run cut short by its time budget loses
    the least important ones."""
    cases = []
    for model, (width, tokens, images) in VIT_SHAPES.items():
        for layer in LAYERS:
            k_dim, n_dim = layer_features(layer, width)
            for pattern in PATTERNS:
                # Per-sample: 256 images, each its own coefficients (target P2).
                n_images = 256 if pattern == "per_sample" else images
                cases.append(Case(model, layer, pattern, n_images, tokens, k_dim, n_dim))
    b32 = VIT_SHAPES["ViT-B-32"]
    fc1 = layer_features("fc1", b32[0])
    cases.append(Case("ViT-B-32", "fc1", "one_group", 8, b32[1], *fc1))  # P3: <= 512 rows
    for model in VIT_SHAPES:  # P4: M = 8
        width, tokens, images = VIT_SHAPES[model]
        cases.append(Case(model, "fc1", "one_group", images, tokens,
                          *layer_features("fc1", width), num_models=8))
    order = ("P1", "P2", "P3", "P4", None)
    return sorted(cases, key=lambda c: order.index(c.target))  # stable: shapes stay in order


def cpu_cases() -> list[Case]:
    """Toy sizes: the harness runs on any machine (absolute CPU times mean nothing here)."""
    return [
        Case("toy", layer, pattern, 8, 5, *layer_features(layer, 32),
             dtype=torch.float32, device="cpu")
        for layer in ("qkv", "fc2") for pattern in PATTERNS
    ]


def lm_cases(num_models: int = 2, model: str = "Llama-3-8B",
             shapes: dict[str, tuple[int, int]] | None = None, prefill: int = 2048,
             prefill_groups: tuple[int, int] = (8, 512),
             decode_groups: Iterable[int] = DECODE_GROUPS,
             dtype: torch.dtype = torch.bfloat16, device: str = "cuda") -> list[Case]:
    """Per layer: prefill as one group of ``prefill`` rows and as ``prefill_groups`` =
    (G, rows) groups, then decode with G groups of one row. ``images`` counts sequences
    and ``tokens`` rows per sequence."""
    cases = []
    for layer, (k_dim, n_dim) in (shapes or LLAMA3_8B).items():
        common = dict(model=model, layer=layer, in_features=k_dim, out_features=n_dim,
                      num_models=num_models, dtype=dtype, device=device)
        cases.append(Case(pattern="one_group", images=1, tokens=prefill, **common))
        cases.append(Case(pattern="per_sample", images=prefill_groups[0],
                          tokens=prefill_groups[1], **common))
        cases += [Case(pattern="per_sample", images=g, tokens=1, **common)
                  for g in decode_groups]
    return cases


def cpu_lm_cases() -> list[Case]:
    """The LM case layout at toy sizes (the harness on a CPU; times mean nothing)."""
    return lm_cases(model="toy-lm", shapes={"qkv": (32, 48), "down_proj": (112, 32)},
                    prefill=16, prefill_groups=(4, 5), decode_groups=(1, 8),
                    dtype=torch.float32, device="cpu")


def default_cases(suite: str = "vit") -> list[Case]:
    """The cases of a suite on this machine: ``"vit"`` (the targets' ViT layers) or ``"lm"``."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if suite == "lm":
        return lm_cases() if torch.cuda.is_available() else cpu_lm_cases()
    return gpu_cases() if torch.cuda.is_available() else cpu_cases()


def lm_predictions(cases: Iterable[Case] | None = None) -> list[dict]:
    """The traffic model's predictions for the LM cases (a Hopper model of 16-bit calls:
    predictions, not measurements): cuBLAS on one pre-merged weight over the same rows, the
    cheapest config of each fused design, and the bytes of the M stacked bf16 weights
    (what a decode step must read once at least)."""
    out = []
    for case in (lm_cases() if cases is None else cases):
        groups = len(group_lengths(case.pattern, case.images, case.tokens))
        pred = predicted_times(case.rows // groups, groups, case.num_models,
                               case.out_features, case.in_features)
        weights_gb = case.num_models * case.in_features * case.out_features * 2 / 1e9
        out.append(dict(case.info(), groups=groups, weights_gb=weights_gb, **pred))
    return out


def render_lm_predictions(records: list[dict]) -> str:
    """Markdown: per LM case, predicted ms of cuBLAS (pre-merged) and of the two fused
    designs (x cuBLAS), and the design's bound."""
    hbm = records[0]["hbm_bytes_per_s"] if records else 0.0
    device = records[0]["device"] if records else "-"
    lines = ["Traffic-model predictions (kernels/cost_model.py, a Hopper model of bf16 "
             f"calls with {device} ceilings; not measured)", "",
             f"| case | rows | groups | M weights GB (ms at {hbm / 1e12:.2f} TB/s) "
             "| cuBLAS premerged ms "
             "| swap-AB ms (× cuBLAS, bound) | epilogue ms (× cuBLAS, bound) |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        base = r["cublas_s"]
        cells = [f"{r[f'{d}_s'] * 1e3:.4f} ({r[f'{d}_s'] / base:.2f}×, {r[f'{d}_bound']})"
                 for d in ("swapab", "epilogue")]
        floor_ms = r["weights_gb"] / r["hbm_bytes_per_s"] * 1e12  # the model's HBM rate
        lines.append(f"| {r['case']} | {r['rows']} | {r['groups']} | {r['weights_gb']:.3f} "
                     f"({floor_ms:.4f}) | {base * 1e3:.4f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


@dataclasses.dataclass
class Inputs:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    coeffs: torch.Tensor
    offsets: torch.Tensor
    bounds: list[int]  # offsets on the host, for the loops


def group_lengths(pattern: str, images: int, tokens: int) -> list[int]:
    """Rows per group: one group, three uneven clusters, or one group per image."""
    if pattern == "one_group":
        return [images * tokens]
    if pattern == "clusters3":
        sizes = [images // 2, images // 3]
        sizes.append(images - sum(sizes))
        return [s * tokens for s in sizes]
    if pattern == "per_sample":
        return [tokens] * images
    raise ValueError(f"unknown pattern {pattern!r}")


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """Random inputs drawn on the case's device (a GPU fills the large ones in
    milliseconds; the values depend on the device's generator)."""
    gen = torch.Generator().manual_seed(seed)
    device_gen = torch.Generator(device=case.device).manual_seed(seed)
    lengths = group_lengths(case.pattern, case.images, case.tokens)
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)

    def rand(*shape, scale=1.0):
        values = torch.randn(*shape, generator=device_gen, device=case.device)
        return (values * scale).to(case.dtype)

    coeffs = torch.rand(len(lengths), case.num_models, generator=gen)
    coeffs = (coeffs / coeffs.sum(1, keepdim=True)).to(case.device)
    return Inputs(
        x=rand(case.rows, case.in_features),
        weight=rand(case.num_models, case.out_features, case.in_features,
                    scale=1 / math.sqrt(case.in_features)),
        bias=rand(case.num_models, case.out_features),
        coeffs=coeffs,
        offsets=torch.tensor(bounds, device=case.device),
        bounds=bounds,
    )


@dataclasses.dataclass
class Prepared:
    """A case's inputs and its float32 reference output, made once for all its methods."""

    case: Case
    inputs: Inputs
    reference: torch.Tensor


@functools.lru_cache(maxsize=1)  # one case at a time on the device
def prepare(case: Case) -> Prepared:
    inputs = make_inputs(case)
    return Prepared(case, inputs, reference_output(inputs))


def reference_output(inputs: Inputs) -> torch.Tensor:
    """Float32 reference: every group's weight and bias merged in float32, F.linear in
    float32 (full precision unless the caller enabled TF32)."""
    x, w, b = inputs.x.float(), inputs.weight.float(), inputs.bias.float()
    return materialize_loop(x, w, b, inputs.coeffs.float(), inputs.bounds)


def materialize_loop(x, weight, bias, coeffs, bounds):
    """Per group: merge weight and bias in x's dtype, then one F.linear."""
    out = torch.empty(x.shape[0], weight.shape[1], device=x.device, dtype=x.dtype)
    c = coeffs.to(x.dtype)
    for g in range(c.shape[0]):
        start, end = bounds[g], bounds[g + 1]
        if start == end:
            continue
        merged = torch.einsum("m,mnk->nk", c[g], weight)
        out[start:end] = F.linear(x[start:end], merged, c[g] @ bias)
    return out


def einsum_grouped_mm(x, weight, bias, coeffs, offsets):
    """All G merged weights at once (G copies in memory), then one grouped GEMM."""
    c = coeffs.to(x.dtype)
    merged = torch.einsum("gm,mnk->gkn", c, weight)  # [G, K, N]: mat2 layout of _grouped_mm
    out = torch._grouped_mm(x, merged, offs=offsets[1:].to(torch.int32))
    return out + torch.repeat_interleave(c @ bias, offsets.diff(), dim=0,
                                         output_size=x.shape[0])


class Unavailable(Exception):
    """A method that does not apply to a case (the reason is the message)."""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _fused_contexts(x: torch.Tensor, strategy: str | None):
    """The contexts a fused method runs under: modules validate their routing once per
    forward and skip value checks; on a CPU the PyTorch path (never the interpreter)
    unless a kernel strategy is forced."""
    if strategy is None:
        backend = "auto" if x.is_cuda else "torch"
    else:
        backend = "triton"
    return skip_value_checks(), use_backend(backend), use_strategy(strategy)


def build(method: str, case: Case, inputs: Inputs) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running ``method`` on ``inputs``."""
    x, w, b, c, off, bounds = (inputs.x, inputs.weight, inputs.bias, inputs.coeffs,
                               inputs.offsets, inputs.bounds)
    if method == "fused" or method in STRATEGY_METHODS:
        strategy = STRATEGY_METHODS.get(method)
        if strategy is not None and not x.is_cuda:
            if not _interpreting():
                raise Unavailable("the kernel strategies run compiled on a GPU (on a CPU only "
                                  "through TRITON_INTERPRET=1, to test this harness)")
            if x.dtype == torch.bfloat16:
                raise Unavailable("the Triton interpreter's bf16 dot is broken")

        def fused():
            checks, backend, forced = _fused_contexts(x, strategy)
            with checks, backend, forced:
                return interp_linear(x, w, c, off, b)

        if strategy is not None:
            try:  # a strategy with no config that fits this call is not applicable
                fused()
            except ValueError as error:
                if "fits in shared memory" not in str(error):
                    raise
                raise Unavailable(str(error)) from error
        return fused
    if method == "premerged":
        merged = torch.einsum("m,mnk->nk", c[0].to(x.dtype), w)
        merged_bias = c[0].to(x.dtype) @ b
        return lambda: F.linear(x, merged, merged_bias)
    if method == "materialize_loop":
        return lambda: materialize_loop(x, w, b, c, bounds)
    if method == "materialize_compiled":
        if len(bounds) - 1 > 8:
            raise Unavailable("compiling the loop would unroll one merge + GEMM per group")
        if x.is_cuda:
            # A fresh compile per case with static shapes: reusing one compiled function
            # across cases switches Dynamo to a dynamic-shape graph from the second shape
            # on (and stops recompiling after 8), timing kernels tuned for another shape.
            # (On a CPU, toy sizes whose times mean nothing, the cheaper reuse is kept.)
            torch._dynamo.reset()
        compiled = torch.compile(materialize_loop, mode="max-autotune", fullgraph=True,
                                 dynamic=False if x.is_cuda else None)
        return lambda: compiled(x, w, b, c, bounds)
    if method == "einsum_grouped_mm":
        if len(bounds) == 2:
            raise Unavailable("one group: this is premerged plus a merge")
        reason = unavailable_here(method)
        if reason or x.dtype != torch.bfloat16:
            raise Unavailable(reason or "torch._grouped_mm needs bf16 inputs")
        return lambda: einsum_grouped_mm(x, w, b, c, off)
    raise ValueError(f"unknown method {method!r}")


def kernel_of(method: str, inputs: Inputs) -> str | None:
    """What a fused method launches for these inputs (None for the baselines)."""
    if method != "fused" and method not in STRATEGY_METHODS:
        return None
    checks, backend, forced = _fused_contexts(inputs.x, STRATEGY_METHODS.get(method))
    with checks, backend, forced:
        return kernel_choice(inputs.x, inputs.weight, inputs.coeffs)


def unavailable_here(method: str) -> str | None:
    """Why ``method`` cannot run on this machine at all, or None."""
    if method == "einsum_grouped_mm":
        if not hasattr(torch, "_grouped_mm"):
            return "this torch has no torch._grouped_mm"
        if not torch.cuda.is_available():
            return "torch._grouped_mm needs an sm90+ GPU (bf16); this machine has no GPU"
        if torch.cuda.get_device_capability()[0] < 9:
            return "torch._grouped_mm needs an sm90+ GPU (bf16)"
    if method in STRATEGY_METHODS and not torch.cuda.is_available():
        return ("the kernel strategies are timed on a GPU; on this machine 'fused' times the "
                "PyTorch path")
    return None


MIN_REPEATS = 20

_flush_buffer: torch.Tensor | None = None


def _flush_l2() -> None:
    """Overwrite 256 MB so that no input stays in the L2 cache (50 MB on an H100)."""
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    _flush_buffer.zero_()


def time_cuda(fn: Callable[[], torch.Tensor], min_repeats: int = MIN_REPEATS,
              min_total_ms: float = 100.0, warmup_ms: float = 25.0,
              max_repeats: int = 2000) -> dict:
    """CUDA-event timing of ``fn``: one call (compiles, autotunes), a warm-up of about
    ``warmup_ms``, then ``max(min_repeats, min_total_ms / estimate)`` calls (at most
    ``max_repeats``), each timed with its own pair of events and preceded by an L2 flush
    outside the timed region. Median, min and quartiles in milliseconds."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    repeats = int(min(max(min_repeats, min_total_ms / estimate), max_repeats))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        _flush_l2()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)])


def time_wall(fn: Callable[[], torch.Tensor], repeats: int = 10) -> dict:
    """Wall-clock timing on a CPU (toy sizes: tests the harness; the times mean nothing)."""
    fn()
    samples = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - begin) * 1e3)
    return _summary(samples)


def _summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    quantile = (lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))])
    return dict(median_ms=statistics.median(ordered), min_ms=ordered[0],
                q25_ms=quantile(0.25), q75_ms=quantile(0.75), repeats=len(ordered))


def time_ms(fn: Callable[[], torch.Tensor], device: str) -> float:
    """Median milliseconds per call (``time_cuda`` on a GPU, ``time_wall`` on a CPU)."""
    return measure(fn, device)["median_ms"]


def measure(fn: Callable[[], torch.Tensor], device: str) -> dict:
    return time_cuda(fn) if device == "cuda" else time_wall(fn)


def tolerance(dtype: torch.dtype) -> float:
    """Largest relative error ||out - ref|| / ||ref|| accepted against the float32
    reference: fp32 far below 1e-3; 16-bit operands (and the baselines' merge in the
    input dtype) between 1e-3 and 1e-2."""
    return 1e-4 if dtype == torch.float32 else 2e-2


def check_output(method: str, prepared: Prepared, got: torch.Tensor) -> float:
    """The relative error of ``got`` against the float32 reference; raise if it is above
    ``tolerance`` or not finite, so that a method computing something else (or wrongly)
    is never timed. ``premerged`` uses group 0's weight for every row: group 0 only."""
    ref = prepared.reference
    if got.shape != ref.shape:
        raise AssertionError(f"{method} returned shape {tuple(got.shape)}, expected "
                             f"{tuple(ref.shape)}")
    if method == "premerged":
        rows = slice(prepared.inputs.bounds[0], prepared.inputs.bounds[1])
        got, ref = got[rows], ref[rows]
    if not got.numel():
        return 0.0
    rel = ((got.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    limit = tolerance(prepared.case.dtype)
    if not rel <= limit:  # NaN fails too
        raise AssertionError(f"{method} disagrees with the float32 reference: relative error "
                             f"{rel:.3g} > {limit:g}")
    return rel


#: Rounds of a case's methods side by side.
ROUNDS = {"cuda": 10, "cpu": 5}
#: On a CPU, the wall milliseconds of each sample (``paired.time_side_by_side``).
CPU_SAMPLE_MS = 20.0


def run(cases: list[Case] | None = None, methods: tuple[str, ...] = METHODS,
        progress: Callable[[list[Case]], Iterable[Case]] | None = None,
        rounds: int | None = None,
        load: Callable[[], float | None] = paired.load_average) -> list[dict]:
    """Time every method on every case (``run_case``): one record per (case, method)
    with the case's parameters (``Case.info``).

    ``progress`` wraps the case list for display (the CLI passes a tqdm bar).
    """
    cases = default_cases() if cases is None else cases
    records = []
    for case in (progress(cases) if progress else cases):
        records += run_case(prepare(case), methods, rounds, load)
    return records


def run_case(prepared: Prepared, methods: Iterable[str], rounds: int | None = None,
             load: Callable[[], float | None] = paired.load_average) -> list[dict]:
    """One record per method of a case: each built and checked against the reference,
    then all of them timed in alternating rounds (``paired.interleave``).

    A method that does not apply gets ``median_ms`` None and the reason in ``skipped``; one
    that fails (wrong output, an exception) gets None and the error in ``error``, and the
    others go on. ``vs_premerged`` and ``vs_fused``: the spread over rounds of the time
    ratio to premerged and to fused, where those were timed too; ``noise``: the note of
    ``paired.noise_note`` (None when quiet)."""
    watch = paired.LoadWatch(load)
    records, timed = {}, {}
    for method in dict.fromkeys(methods):
        records[method] = dict(prepared.case.info(), method=method, median_ms=None)
        try:
            fn = build(method, prepared.case, prepared.inputs)
        except Unavailable as reason:
            records[method]["skipped"] = str(reason)
            continue
        try:
            records[method]["kernel"] = kernel_of(method, prepared.inputs)
            records[method]["rel_err"] = check_output(method, prepared, fn())
            timed[method] = fn
        except Exception as error:  # noqa: BLE001 (recorded, the run goes on)
            records[method]["error"] = _error_line(error)
    if timed:
        try:
            samples = _time_side_by_side(timed, prepared.case.device, rounds)
        except Exception as error:  # noqa: BLE001
            for method in timed:
                records[method]["error"] = _error_line(error)
            samples = {}
        for method, times in samples.items():
            rec = records[method]
            rec.update(_summary(times))
            for base in ("premerged", "fused"):
                if base in samples and base != method:
                    rec[f"vs_{base}"] = paired.ratio(samples, method, base).as_dict()
    highest = watch.check()
    for rec in records.values():
        if rec.get("median_ms") is not None:
            rec.update(load_average=highest, cores=paired.core_count())
            rec["noise"] = paired.records_note([rec], ("vs_premerged", "vs_fused"))
    return list(records.values())


def _error_line(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:300]


def _time_side_by_side(fns: dict[str, Callable[[], torch.Tensor]], device: str,
                       rounds: int | None) -> dict[str, list[float]]:
    """Milliseconds per method and round. On a GPU each sample is the median of CUDA-event
    timed calls, each after an L2 flush, enough of them over the rounds for about 100 ms
    (and ``MIN_REPEATS`` calls) per method; on a CPU the wall time per call of about
    ``CPU_SAMPLE_MS`` of calls, on one thread (``paired.one_cpu_thread``)."""
    rounds = rounds or ROUNDS["cuda" if device == "cuda" else "cpu"]
    if device != "cuda":
        with paired.one_cpu_thread(device):
            return paired.time_side_by_side(fns, rounds, CPU_SAMPLE_MS)
    calls = {}
    for fn in fns.values():
        estimate = _warm_cuda(fn)
        calls[fn] = math.ceil(max(MIN_REPEATS, min(100.0 / estimate, 2000)) / rounds)
    return paired.interleave(fns, rounds, lambda fn: _cuda_sample(fn, calls[fn]))


def _warm_cuda(fn: Callable[[], torch.Tensor], warmup_ms: float = 25.0) -> float:
    """One call (compiles, autotunes), then about ``warmup_ms`` of calls; the estimated
    milliseconds per call."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    return estimate


def _cuda_sample(fn: Callable[[], torch.Tensor], calls: int) -> float:
    """The median of ``calls`` CUDA-event timed calls, each after an L2 flush."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    for i in range(calls):
        _flush_l2()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def run_one(method: str, prepared: Prepared) -> dict:
    """One (case, method) record, timed alone (``run_case`` times the methods of a case
    side by side, which their ratios need)."""
    return run_case(prepared, (method,))[0]


def render_markdown(records: list[dict], header: list[str]) -> str:
    """One table per case: each method's median time, × premerged and × fused (medians over
    alternating rounds, with the interquartile range), what the fused methods launched,
    and the relative error against the float32 reference; the note of
    ``paired.noise_note`` below when the numbers are noisy."""
    by_case: dict[str, dict[str, dict]] = {}
    notes: dict[str, dict[str, list[str]]] = {}  # case -> reason -> methods
    for r in records:
        by_case.setdefault(r["case"], {})
        if r.get("median_ms") is None:
            why = (f"failed: {r['error']}" if r.get("error")
                   else r.get("skipped") or "no time recorded")
            notes.setdefault(r["case"], {}).setdefault(why, []).append(r["method"])
        else:
            by_case[r["case"]][r["method"]] = r
    lines = list(header) + [""]
    apart = False
    for case, rows in by_case.items():
        lines += [f"### {case}", "", "| method | median ms | × premerged (IQR) | × fused (IQR) "
                  "| kernel | rel. error |", "|---|---|---|---|---|---|"]
        for method, r in sorted(rows.items(), key=lambda kv: kv[1]["median_ms"]):
            cells = []
            for base in ("premerged", "fused"):
                cell, timed_apart = _ratio_cell(r, rows.get(base), base)
                cells.append(cell)
                apart = apart or timed_apart
            err = f"{r['rel_err']:.1e}" if r.get("rel_err") is not None else "–"
            lines.append(f"| {method} | {r['median_ms']:.4f} | {cells[0]} | {cells[1]} | "
                         f"{r.get('kernel') or '–'} | {err} |")
        for why, methods in notes.get(case, {}).items():
            lines += ["", f"Not timed: {', '.join(methods)}: {why}"]
        lines.append("")
    lines.append("Ratios: medians over rounds that alternate a case's methods, with the "
                 "interquartile range" + ("; † timed apart (separate runs), so a change of "
                                          "load in between skews them." if apart else "."))
    note = paired.records_note([r for rows in by_case.values() for r in rows.values()],
                               ("vs_premerged", "vs_fused"))
    if note:
        lines += ["", f"**{note}**"]
    return "\n".join(lines)


def _ratio_cell(record: dict, base: dict | None, name: str) -> tuple[str, bool]:
    """(cell, timed apart): the side-by-side ratio to ``name`` when the record has it,
    else the quotient of the two medians (marked †), else a dash."""
    if record.get(f"vs_{name}"):
        s = paired.spread_from_dict(record[f"vs_{name}"])
        return (f"{s.median:.2f} ({s.q25:.2f}–{s.q75:.2f})", False)
    if base is None:
        return "–", False
    if base is record:
        return "1.00", False
    return f"{record['median_ms'] / base['median_ms']:.2f} †", True


def environment_header(command: str) -> list[str]:
    """Device, versions, date and command: the head of every results table."""
    import datetime
    from importlib.metadata import version

    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else "cpu (no GPU: toy sizes, PyTorch path, one thread; times mean nothing)")
    gluon = os.environ.get("DAWIN_FAST_GLUON", "0")
    return [f"Device: {device}; torch {torch.__version__}, triton {version('triton')}; "
            f"{datetime.date.today().isoformat()}; DAWIN_FAST_GLUON={gluon}",
            f"Command: `{command}`"]
