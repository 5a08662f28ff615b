"""Benchmark cases for the fused interpolation linear and the baselines it is judged by.

Used by ``benchmarks/`` (pytest-benchmark) and by ``dawin-fast bench`` (a plain runner).

Every method computes the same thing on the same inputs: rows grouped by ``offsets``,
group g through the interpolation ``sum_i coeffs[g, i] W_i`` of M stacked linears.

Methods:
    fused                 dawin_fast.interp_linear (one launch, no merged weight)
    premerged             F.linear with one weight merged beforehand (the floor: a plain GEMM;
                          cuBLAS on a GPU, the CPU's BLAS on a CPU)
    materialize_loop      per group: merge the weight (einsum), then F.linear (eager)
    materialize_compiled  the same function under torch.compile(mode="max-autotune")
    einsum_grouped_mm     one einsum into G merged weights, then torch._grouped_mm (sm90 bf16)

On a GPU the shapes are the real ViT-B/32, B/16 and L/14 layers; on a CPU they shrink to a
toy size so that the harness itself runs (and is tested) anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ..ops import interp_linear, skip_value_checks, use_backend

# width, tokens per image, images per batch for one big group (>= 8k rows, DESIGN P1).
VIT_SHAPES = {
    "ViT-B-32": (768, 50, 256),
    "ViT-B-16": (768, 197, 64),
    "ViT-L-14": (1024, 257, 64),
}
LAYERS = ("qkv", "out_proj", "fc1", "fc2")
PATTERNS = ("one_group", "clusters3", "per_sample")
METHODS = ("fused", "premerged", "materialize_loop", "materialize_compiled",
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


def layer_features(layer: str, width: int) -> tuple[int, int]:
    """(in_features, out_features) of an open_clip ViT layer."""
    return {
        "qkv": (width, 3 * width),
        "out_proj": (width, width),
        "fc1": (width, 4 * width),
        "fc2": (4 * width, width),
    }[layer]


def gpu_cases() -> list[Case]:
    cases = []
    for model, (width, tokens, images) in VIT_SHAPES.items():
        for layer in LAYERS:
            k_dim, n_dim = layer_features(layer, width)
            for pattern in PATTERNS:
                # Per-sample: 256 images, each its own coefficients (DESIGN P2).
                n_images = 256 if pattern == "per_sample" else images
                cases.append(Case(model, layer, pattern, n_images, tokens, k_dim, n_dim))
    b32 = VIT_SHAPES["ViT-B-32"]
    fc1 = layer_features("fc1", b32[0])
    cases.append(Case("ViT-B-32", "fc1", "one_group", 8, b32[1], *fc1))  # P3: <= 512 rows
    for model in VIT_SHAPES:  # P4: M = 8
        width, tokens, images = VIT_SHAPES[model]
        cases.append(Case(model, "fc1", "one_group", images, tokens,
                          *layer_features("fc1", width), num_models=8))
    return cases


def cpu_cases() -> list[Case]:
    """Toy sizes: the harness runs on any machine (absolute CPU times mean nothing here)."""
    return [
        Case("toy", layer, pattern, 8, 5, *layer_features(layer, 32),
             dtype=torch.float32, device="cpu")
        for layer in ("qkv", "fc2") for pattern in PATTERNS
    ]


def default_cases() -> list[Case]:
    return gpu_cases() if torch.cuda.is_available() else cpu_cases()


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
    gen = torch.Generator().manual_seed(seed)
    lengths = group_lengths(case.pattern, case.images, case.tokens)
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(case.device, case.dtype)

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


def build(method: str, case: Case, inputs: Inputs) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running ``method`` on ``inputs``."""
    x, w, b, c, off, bounds = (inputs.x, inputs.weight, inputs.bias, inputs.coeffs,
                               inputs.offsets, inputs.bounds)
    if method == "fused":
        # On a CPU, time the PyTorch path, never the Triton interpreter.
        backend = "auto" if x.is_cuda else "torch"

        def fused():
            # Modules validate their routing once per forward, then skip value checks.
            with skip_value_checks(), use_backend(backend):
                return interp_linear(x, w, c, off, b)
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
        compiled = torch.compile(materialize_loop, mode="max-autotune", fullgraph=True)
        return lambda: compiled(x, w, b, c, bounds)
    if method == "einsum_grouped_mm":
        if len(bounds) == 2:
            raise Unavailable("one group: this is premerged plus a merge")
        reason = unavailable_here(method)
        if reason or x.dtype != torch.bfloat16:
            raise Unavailable(reason or "torch._grouped_mm needs bf16 inputs")
        return lambda: einsum_grouped_mm(x, w, b, c, off)
    raise ValueError(f"unknown method {method!r}")


def unavailable_here(method: str) -> str | None:
    """Why ``method`` cannot run on this machine at all, or None."""
    if method == "einsum_grouped_mm":
        if not hasattr(torch, "_grouped_mm"):
            return "this torch has no torch._grouped_mm"
        if not torch.cuda.is_available():
            return "torch._grouped_mm needs an sm90+ GPU (bf16); this machine has no GPU"
        if torch.cuda.get_device_capability()[0] < 9:
            return "torch._grouped_mm needs an sm90+ GPU (bf16)"
    return None


def time_ms(fn: Callable[[], torch.Tensor], device: str) -> float:
    """Median milliseconds per call: ``triton.testing.do_bench`` on a GPU (CUDA events,
    L2 flushed between runs), wall clock over repeated calls on a CPU."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    import statistics
    import time

    fn()
    samples = []
    for _ in range(10):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def check_against_fused(method: str, inputs: Inputs, got: torch.Tensor,
                        fused: torch.Tensor) -> None:
    """Raise if a baseline computes something other than the fused op (so it cannot win
    by doing less). The baselines merge in the input dtype, so allow its roundoff."""
    if method == "premerged":  # one weight for all rows: compare group 0 only
        rows = slice(inputs.bounds[0], inputs.bounds[1])
        got, fused = got[rows], fused[rows]
    scale = fused.float().abs().mean().item() + 1e-6
    err = (got.float() - fused.float()).abs().max().item() if got.numel() else 0.0
    if err > 0.05 * scale + 1e-3:
        raise AssertionError(f"{method} disagrees with fused: max error {err:.3g}")


def run(cases: list[Case] | None = None, methods: tuple[str, ...] = METHODS,
        progress: Callable[[list[Case]], Iterable[Case]] | None = None) -> list[dict]:
    """Time every method on every case: one record per (case, method); a method that does
    not apply to a case gets ``median_ms`` None and the reason in ``skipped``.

    ``progress`` wraps the case list for display (the CLI passes a tqdm bar).
    """
    cases = default_cases() if cases is None else cases
    records = []
    for case in (progress(cases) if progress else cases):
        inputs = make_inputs(case)
        fused = build("fused", case, inputs)()
        for method in methods:
            try:
                fn = build(method, case, inputs)
            except Unavailable as reason:
                records.append(dict(case=case.id, method=method, median_ms=None,
                                    skipped=str(reason)))
                continue
            check_against_fused(method, inputs, fn(), fused)
            records.append(dict(case=case.id, method=method,
                                median_ms=time_ms(fn, case.device)))
    return records


def render_markdown(records: list[dict], header: list[str]) -> str:
    """One table per case: each method's median time, × premerged and × fused."""
    by_case: dict[str, dict[str, float]] = {}
    skipped: dict[str, list[str]] = {}
    for r in records:
        by_case.setdefault(r["case"], {})
        if r["median_ms"] is None:
            skipped.setdefault(r["case"], []).append(f"{r['method']} ({r['skipped']})")
        else:
            by_case[r["case"]][r["method"]] = r["median_ms"]
    lines = list(header) + [""]
    for case, times in by_case.items():
        floor, fused = times.get("premerged"), times.get("fused")
        lines += [f"### {case}", "", "| method | median ms | × premerged | × fused |",
                  "|---|---|---|---|"]
        for method, ms in sorted(times.items(), key=lambda kv: kv[1]):
            vs_floor = f"{ms / floor:.2f}" if floor else "–"
            vs_fused = f"{ms / fused:.2f}" if fused else "–"
            lines.append(f"| {method} | {ms:.4f} | {vs_floor} | {vs_fused} |")
        if case in skipped:
            lines += ["", f"Not applicable: {'; '.join(skipped[case])}."]
        lines.append("")
    return "\n".join(lines)


def environment_header(command: str) -> list[str]:
    """Device, versions, date and command: the head of every results table."""
    import datetime
    from importlib.metadata import version

    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else "cpu (no GPU: toy sizes, PyTorch path; times mean nothing)")
    return [f"Device: {device}; torch {torch.__version__}, triton {version('triton')}; "
            f"{datetime.date.today().isoformat()}", f"Command: `{command}`"]
