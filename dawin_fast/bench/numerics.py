"""Production-shape numerics of every kernel strategy, and 10-launch repeatability.

The register-A hazard check on a GPU: a wgmma whose register A operand is rewritten while
it is still in flight multiplies one k16 slice of one tile by the wrong values. The kernel
tests (K, N <= 70, a norm-wise tolerance) would absorb that; this check would not:

* shapes of the ViT layers (K=768/N=3072 and K=3072/N=768: 24 to 96 k-steps), T = 3200 and
  12 800 rows, M = 2 and 8, bf16 and fp16; one group, and per-sample groups of 50 rows;
* every strategy of ``KERNEL_STRATEGIES`` forced with ``use_strategy`` (a strategy another
  engineer adds joins by itself);
* distinct rows (random x) and neighbouring groups with very different coefficients
  (alternating [1.5, -0.5, ...] and [-0.5, 1.5, ...] plus noise: a tile computed with its
  neighbour's merged weight is off by 2 |W_1 - W_0| x, far above rounding);
* each output element against fp32 ``F.linear`` on the group's merged weight, with an
  element-wise bound (``error_bound``) that one corrupted k16 slice exceeds;
* 10 launches into outputs poisoned with NaN before each: bitwise identical, all finite.

The bound (``dawin_fast.reference``, where it is derived): |y - ref| <= u |ref| + 6 u s,
with u the 16-bit unit roundoff and s[r, n] = sqrt(sum_k (x[r, k] w[n, k])^2); one
corrupted k16 slice exceeds it (``tests``: ``benchmarks/test_gpu_session.py`` corrupts one
slice of one 64 x 16 patch at K = 3072 and checks that the bound catches it, and that
honest bf16 rounding passes). The verifier of the dispatch (``dawin_fast.verify``) holds
every kernel to the same bound on the user's device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch

from ..ops import KERNEL_STRATEGIES, interp_linear, kernel_choice, skip_value_checks, use_backend
from ..ops import use_strategy as _use_strategy
from ..reference import SIGMAS, UNIT_ROUNDOFF, compare, error_bound, merged_reference

REPEATS = 10
SHAPES = ((768, 3072), (3072, 768))  # (K, N): ViT-B/32 fc1 and fc2
ROWS = (3200, 12800)
MODELS = (2, 8)
DTYPES = (torch.bfloat16, torch.float16)
GROUPINGS = ("one_group", "per_sample")
TOKENS = 50  # rows per sample (ViT-B/32 at 224 px)
#: Strategies whose sampled SASS showed no register-A hazard (the compile gate's
#: ``a_hazard`` check): checked after the
#: others. Every other strategy, a new one included, counts as suspect until checked.
QUIET_STRATEGIES = ("combine", "epilogue")


@dataclasses.dataclass(frozen=True)
class NumericsCase:
    """One forced-strategy call: x [rows, k_dim], weight [num_models, n_dim, k_dim]."""

    strategy: str
    k_dim: int
    n_dim: int
    rows: int
    num_models: int
    dtype: torch.dtype
    grouping: str  # "one_group" or "per_sample" (groups of ``tokens`` rows)
    device: str = "cuda"
    tokens: int = TOKENS

    @property
    def groups(self) -> int:
        return 1 if self.grouping == "one_group" else math.ceil(self.rows / self.tokens)

    @property
    def id(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return (f"{self.strategy}-{dtype}-M{self.num_models}-K{self.k_dim}-N{self.n_dim}-"
                f"T{self.rows}-{self.grouping}")

    def info(self) -> dict:
        return dict(case=self.id, strategy=self.strategy, k_dim=self.k_dim, n_dim=self.n_dim,
                    rows=self.rows, num_models=self.num_models, groups=self.groups,
                    dtype=str(self.dtype).removeprefix("torch."), grouping=self.grouping,
                    device=self.device)


def strategies() -> tuple[str, ...]:
    """Every Triton kernel strategy the launcher offers, read at call time."""
    return tuple(KERNEL_STRATEGIES)


def production_cases(names: tuple[str, ...] | None = None) -> list[NumericsCase]:
    """Every production case, most important first. Specializations (dtype, M, one group
    or many) in the order bf16 before fp16 (bf16 is what the ViT runs, and what the
    interpreter cannot check), M=2 before M=8, per-sample groups before one group (exact
    DaWin's default, and where group mix-ups show). Within one, the kernels with a
    register-A wgmma (``HAZARD_FIRST``: row-scaled, swap-AB) and any strategy this list
    does not know yet before combine and epilogue (no hazard found in their SASS); then
    the fc2 shape (96 k-steps of 32) before fc1, and 12 800 rows before 3200."""
    names = strategies() if names is None else names
    ranked = sorted(names, key=lambda s: (s in QUIET_STRATEGIES, names.index(s)))
    cases = []
    for dtype in DTYPES:
        for m in MODELS:
            for grouping in ("per_sample", "one_group"):
                for strategy in ranked:
                    for k_dim, n_dim in reversed(SHAPES):
                        for rows in reversed(ROWS):
                            cases.append(NumericsCase(strategy, k_dim, n_dim, rows, m, dtype,
                                                      grouping))
    return cases


def toy_cases(names: tuple[str, ...] | None = None) -> list[NumericsCase]:
    """CPU stand-ins for the dry run, through the Triton interpreter: fp16 (its bf16 dot is
    broken), 4 k-steps of 16, group boundaries inside tiles; per-sample groups for every
    strategy, one group for the first."""
    names = strategies() if names is None else names
    cases = [NumericsCase(s, 64, 40, 20, 2, torch.float16, "per_sample", device="cpu",
                          tokens=5) for s in names]
    return cases + [NumericsCase(names[0], 64, 40, 20, 3, torch.float16, "one_group",
                                 device="cpu", tokens=5)]


@dataclasses.dataclass
class Inputs:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    coeffs: torch.Tensor  # [G, M] float32
    offsets: torch.Tensor  # [G + 1] int64


def make_inputs(case: NumericsCase, seed: int = 0) -> Inputs:
    """Random rows (all distinct), weights scaled by 1/sqrt(K), and coefficients that swing
    between neighbouring groups: row g is e_(g mod M) * 2 - 0.5 plus noise (sums to ~1)."""
    gen = torch.Generator(device=case.device).manual_seed(seed)
    host = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=case.device) * scale).to(case.dtype)

    g, m = case.groups, case.num_models
    base = torch.full((g, m), -0.5 / max(m - 1, 1))
    base[torch.arange(g), torch.arange(g) % m] = 1.5
    coeffs = base + 0.1 * torch.rand(g, m, generator=host)
    bounds = [min(i * case.tokens, case.rows) for i in range(g)] + [case.rows]
    if case.grouping == "one_group":
        bounds = [0, case.rows]
    return Inputs(x=rand(case.rows, case.k_dim),
                  weight=rand(m, case.n_dim, case.k_dim, scale=1 / math.sqrt(case.k_dim)),
                  bias=rand(m, case.n_dim),
                  coeffs=coeffs.to(case.device),
                  offsets=torch.tensor(bounds, dtype=torch.int64, device=case.device))


def reference(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(ref, s): fp32 ``F.linear`` on each group's merged weight (merged in fp32 from the
    16-bit weights, TF32 off), and s[r, n] = sqrt(sum_k (x[r, k] w[n, k])^2)."""
    return merged_reference(inputs.x, inputs.weight, inputs.coeffs, inputs.offsets,
                            inputs.bias)


def _run(case: NumericsCase, inputs: Inputs) -> torch.Tensor:
    backend = "triton"
    with skip_value_checks(), use_backend(backend), _use_strategy(case.strategy):
        return interp_linear(inputs.x, inputs.weight, inputs.coeffs, inputs.offsets,
                             inputs.bias)


def _poison(rows: int, cols: int, dtype: torch.dtype, device: str) -> None:
    """Fill the block the next output of this size will most likely get with NaN (the
    caching allocator hands a freed block of the same size back first)."""
    torch.full((rows, cols), math.nan, dtype=dtype, device=device)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def check(case: NumericsCase, seed: int = 0) -> Iterator[dict]:
    """Two records: the error against the bound (``kind`` "numerics"), then 10 launches
    compared bit for bit with the first (``kind`` "repeat", tagged ``repeat``)."""
    info = dict(case.info(), method=f"fused_{case.strategy}")
    inputs = make_inputs(case, seed)
    with skip_value_checks(), use_backend("triton"), _use_strategy(case.strategy):
        kernel = kernel_choice(inputs.x, inputs.weight, inputs.coeffs)
    ref, scale = reference(inputs)
    bound = error_bound(ref, scale, case.dtype)
    _poison(case.rows, case.n_dim, case.dtype, case.device)
    first = _run(case, inputs)
    result = compare(first, ref, bound)
    yield dict(info, kind="numerics", kernel=kernel, bound=f"u|ref| + {SIGMAS:g} u s",
               unit_roundoff=UNIT_ROUNDOFF[case.dtype], **result)
    del ref, scale, bound
    differing, nonfinite = [], 0
    for _ in range(REPEATS - 1):
        _poison(case.rows, case.n_dim, case.dtype, case.device)
        again = _run(case, inputs)
        nonfinite += int((~torch.isfinite(again)).sum())
        differing.append(int((_bits(again) != _bits(first)).sum()))
        del again
    yield dict(info, kind="repeat", tags=["repeat"], kernel=kernel, launches=REPEATS,
               differing_elements=differing, nonfinite=nonfinite,
               passed=bool(max(differing, default=0) == 0 and nonfinite == 0
                           and result["nonfinite"] == 0))
