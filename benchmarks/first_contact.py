"""First GPU contact in one device call: the work list, its plan, its children.

``benchmarks/gpu_session.py``'s ``first-contact`` stage runs the self-check, then the parts
below, each as children of this module (a CUDA error ends its context, so it must not take
the rest down), most important first, under a hard budget (450 s of work by default). Each
child appends its records to one JSON-lines file as they come, so a run cut at any point
leaves them.

1. ``ceilings``: device copy bandwidth and the bf16 8192^3 GEMM rate, measured in the call.
2. ``numerics``: ``dawin_fast.bench.numerics`` at production shapes, every strategy of the
   launcher forced, error against an element-wise bound and 10-launch repeatability
   (records tagged ``repeat``), with ``DAWIN_FAST_GLUON=0``: the non-Gluon cases that the
   plan fits in the budget. A case whose served strategy equals another case's (on Hopper
   a forced "rowscaled" runs "epilogue") is dropped.
3. ``gluon``: a smoke launch of each Gluon kernel at a real shape against the reference,
   then every Gluon numerics case, with ``DAWIN_FAST_GLUON=1``, in their own child. Gluon is
   on for the later parts only if all of it passed and the child exited cleanly in time.
4. ``layers``: P1-P4 at ViT-B/32 shapes, side by side: the default fused op, each
   strategy forced, cuBLAS on the pre-merged weight, eager materialize / the per-group loop.
5. ``e2e``: P5 and P6, whole DaWin on ViT-B/32 (``dawin_fast.bench.e2e``).
6. ``numerics_more``: the non-Gluon numerics cases the plan left out, while time remains.

**Items.** Each part is a list of items (a numerics case, a (case, method) pair, ...), each
with the kernel it launches. A child writes a ``start`` record before an item and a
``done`` record after it. After the first launch of an item it polls a CUDA event for at
most ``LAUNCH_DEADLINE_S``: a kernel still running then is a hang, and the child exits at
once (``HANG_EXIT``), as it does after a CUDA error (``CUDA_ERROR_EXIT``: the context is
lost). The driver then writes the failure record of the item that started and never
finished, and starts a new child on the items left, without those of the failed kernel
(each gets a record saying why). Children run with ``DAWIN_FAST_MEASURE=0``: the model's
dispatch, which is what the plan counts.

The plan (``plan``) counts the work from the same dispatch and config rules the kernels
use: Triton compile variants (each once per run: the children share one cache directory),
autotune benchmarks (once per key and child), timed calls, numerics cases, every e2e call
(the projection and head too), child start-ups; with the H100's ceilings (the slower card
of the two lent). It assumes a cold cache: a carried warm cache can only make it shorter.

A fake device (``FAKE_ENV``: a JSON file of items and faults, for the CPU test of the
driver) replaces the work of each item, and nothing else: a kernel that raises a CUDA
error, one whose first launch never finishes, one that returns wrong values.

    python -m benchmarks.first_contact PART --records FILE [--toy] [--items I,J] [--smoke I]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PARTS = ("ceilings", "numerics", "gluon", "layers", "e2e", "numerics_more")
#: The item list each part's indices refer to.
PART_KIND = {"ceilings": "ceiling", "numerics": "numerics", "numerics_more": "numerics",
             "gluon": "numerics", "layers": "layer", "e2e": "e2e"}
DEFAULT_BUDGET_S = 450.0
LAUNCH_DEADLINE_S = 20.0  # a first launch still running after this is a hang
CUDA_ERROR_EXIT = 70
HANG_EXIT = 71
FAKE_ENV = "DAWIN_FIRST_CONTACT_FAKE"

# Cost assumptions of the plan, seconds (stated so that the first run can correct them):
# COMPILE_S one Triton compile variant (the cache build compiled this stage's variants at
# 1.03 s per variant per core here, Triton 3.6.0, sm_90a; 1.5 allows a slower core and the
# JIT's own work in a real launch); AUTOTUNE_S one config benchmarked by triton.autotune
# (do_bench: 25 ms warm-up + 100 ms); MEASURE_S one timed (case, method) of time_cuda
# with its guarded first launch; CASE_S one layer case's inputs and float32 reference;
# NUMERICS_CASE_S one numerics case (inputs, fp32 reference and scale, 10 launches, the
# comparisons, at 12 800 x 3072); SMOKE_S one smoke launch and its reference; CHILD_S a
# child's start (import torch, dawin_fast, open_clip, first CUDA context); SELFCHECK_S the
# self-check's child; STARTUP_S the wheels, the driver and its environment probe; RENDER_S
# the final render; E2E_SETUP_S two ViT-B/32 built and moved to the GPU.
COSTS = dict(COMPILE_S=1.5, AUTOTUNE_S=0.15, MEASURE_S=0.35, CASE_S=0.5, NUMERICS_CASE_S=0.6,
             SMOKE_S=1.0, CHILD_S=10.0, SELFCHECK_S=30.0, STARTUP_S=25.0, RENDER_S=2.0,
             E2E_SETUP_S=20.0, MARGIN_S=15.0)
# e2e: seconds per call on the H200 (8.24 ms per 256 images of the plain forward measured
# on an H100: 1024 images ~ 33 ms; DaWin ~3-4 forwards; the rebuild loops load a 176 MB
# state dict per cluster / per sample), and calls per method (warm-up + repeats). The plan
# multiplies them by H100_SLOWER (HBM-bound work: 4.3 / 2.97 TB/s).
E2E_CALL_S = dict(plain_forward=0.04, wise_ft=0.06, dawin_mixture=0.2, dawin_per_sample=0.2,
                  merged_forward_k3=0.06, merged_forward_per_sample=0.06,
                  rebuild_per_cluster=0.6, rebuild_per_sample=4.0)
H100_SLOWER = 4.3 / 2.97
CEILING_COPY_BYTES = 4 * 2**30  # per direction: 8 GiB moved per copy, far past the L2
CEILING_GEMM = 8192
CEILING_REPEATS = 20
CEILINGS = ("device copy", "GEMM")


# --------------------------------------------------------------------------- the work


def layer_cases(toy: bool) -> list:
    """P1-P4 at ViT-B/32 shapes (``bench.layers.gpu_cases`` filtered), in target order;
    toy: the same layers, patterns and M at CPU sizes, keeping their target tag."""
    from dawin_fast.bench import layers as bench

    cases = [c for c in bench.gpu_cases() if c.model == "ViT-B-32" and c.target]
    if not toy:
        return cases
    import torch

    def shrink(n: int) -> int:
        return max(8, n // 24)

    return [dataclasses.replace(c, model="toy", images=max(1, c.images // 32), tokens=5,
                                in_features=shrink(c.in_features),
                                out_features=shrink(c.out_features), dtype=torch.float32,
                                device="cpu") for c in cases]


def layer_target(case) -> str | None:
    """The target of a first-contact layer case, also for its toy stand-in."""
    if case.device == "cuda":
        return case.target
    by_shape = {("one_group", 2, True): "P1", ("per_sample", 2, True): "P2",
                ("one_group", 2, False): "P3", ("one_group", 8, True): "P4"}
    return by_shape.get((case.pattern, case.num_models, case.images > 1))


def layer_methods() -> tuple[str, ...]:
    """The default op, every strategy forced, and the baselines (no torch.compile: that
    is the second call's)."""
    from dawin_fast.bench import layers as bench

    return ("fused", *bench.STRATEGY_METHODS, "premerged", "materialize_loop")


def layer_items(toy: bool) -> list[tuple[int, str]]:
    """(case index, method) of every layer item, in run order."""
    return [(i, m) for i in range(len(layer_cases(toy))) for m in layer_methods()]


def hopper_target(gluon: bool):
    from dawin_fast.kernels import dispatch

    return dispatch.Target(cuda=True, half=True, gluon=gluon, hopper=True)


def numerics_cases(toy: bool) -> list:
    """The numerics cases in priority order; at production shapes without those whose
    served strategy on Hopper (both lent cards) equals another case's strategy."""
    from dawin_fast.bench import numerics

    if toy:
        return numerics.toy_cases()
    from dawin_fast.kernels import dispatch

    cases = numerics.production_cases()
    target = hopper_target(gluon=True)

    def key(case, strategy):
        return (strategy, case.dtype, case.num_models, case.k_dim, case.n_dim, case.rows,
                case.grouping)

    own = {key(c, c.strategy) for c in cases}
    return [c for c in cases
            if (served := dispatch.served_by(c.strategy, target, c.dtype, False)) == c.strategy
            or key(c, served) not in own]


def kernel_name(strategy: str, rows: int, groups: int, m: int, n: int, k: int, dtype,
                gluon: bool) -> str:
    """The kernel a call launches on Hopper under the model's dispatch ("swapab (Gluon)",
    "wstat (twin)", "epilogue", ...): what a CUDA error in it excludes."""
    from dawin_fast.kernels import dispatch
    from dawin_fast.kernels.fused_configs import wstat_fits

    strategy = dispatch.served_by(strategy, hopper_target(gluon), dtype, False)
    if strategy == "swapab":
        return f"swapab ({'Gluon' if gluon else 'twin'})"
    if strategy == "wstat":
        config = dispatch.best_config(strategy, rows, groups, m, n, k)
        on = gluon and wstat_fits(dispatch.wstat_config(config), k, dtype.itemsize)
        return f"wstat ({'Gluon' if on else 'twin'})"
    return strategy


@dataclasses.dataclass(frozen=True)
class Item:
    """One unit of a part's work: ``index`` into its kind's list, the case it names and
    the kernel it launches."""

    kind: str  # "ceiling", "numerics", "layer", "e2e"
    index: int
    case: str
    kernel: str
    method: str | None = None

    @property
    def gluon(self) -> bool:
        return "Gluon" in self.kernel

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.index}"


def items(kind: str, toy: bool, gluon: bool) -> list[Item]:
    """Every item of a kind, with the kernel each launches (``gluon``: under
    DAWIN_FAST_GLUON=1); computed alike by the driver and the children."""
    fake = _fake_spec()
    if fake is not None:
        return [Item(kind, i, d["case"], d["kernel"], d.get("method"))
                for i, d in enumerate(fake["items"].get(kind, []))]
    if kind == "ceiling":
        return [Item(kind, i, name, "cublas" if name == "GEMM" else "copy")
                for i, name in enumerate(CEILINGS)]
    if kind == "numerics":
        out = []
        for i, c in enumerate(numerics_cases(toy)):
            kernel = ("interpreter" if toy else kernel_name(
                c.strategy, c.rows, c.groups, c.num_models, c.n_dim, c.k_dim, c.dtype, gluon))
            out.append(Item(kind, i, c.id, kernel, f"fused_{c.strategy}"))
        return out
    if kind == "layer":
        from dawin_fast.bench import layers as bench

        cases = layer_cases(toy)
        out = []
        for i, (c, method) in enumerate(layer_items(toy)):
            case = cases[c]
            strategy = bench.STRATEGY_METHODS.get(method)
            if toy or method not in ("fused", *bench.STRATEGY_METHODS):
                kernel = method if not toy else f"toy {method}"
            else:
                groups = len(bench.group_lengths(case.pattern, case.images, case.tokens))
                if strategy is None:
                    strategy = _default_strategy(case.rows, groups, case.num_models,
                                                 case.out_features, case.in_features,
                                                 case.dtype, gluon)
                kernel = kernel_name(strategy, case.rows, groups, case.num_models,
                                     case.out_features, case.in_features, case.dtype, gluon)
            out.append(Item(kind, i, case.id, kernel, method))
        return out
    if kind == "e2e":
        from dawin_fast.bench import e2e as bench_e2e

        return [Item(kind, i, "e2e", f"e2e {m}", m) for i, m in enumerate(bench_e2e.METHODS)]
    raise ValueError(f"unknown item kind {kind!r}")


def _default_strategy(rows, groups, m, n, k, dtype, gluon) -> str:
    from dawin_fast.kernels.interp_matmul import choose_strategy

    return choose_strategy(rows, groups, m, dtype, False, True, n, k, hopper_target(gluon))


E2E_TARGETS = {"merged_forward_k3": "P6", "merged_forward_per_sample": "P6"}


def e2e_calls(case=None) -> list[tuple[str, int, int, int, int, int]]:
    """(method, rows, groups, M, N, K) of every distinct fused call one call of each e2e
    method makes: the patch embedding, the four linears of each block, the projection and
    the head (the expert passes of DaWin are one-hot: cuBLAS, no fused kernel)."""
    from dawin_fast.bench import e2e as bench_e2e

    case = case or bench_e2e.E2ECase("ViT-B-32", dict(image_size=224, patch_size=32,
                                                      width=768, layers=12, heads=12,
                                                      mlp_ratio=4.0, output_dim=512),
                                     images=1024, classes=1000, dtype=None, device="cuda",
                                     rebuild_images=128)
    v, b = case.vit, case.images
    patches = (v["image_size"] // v["patch_size"]) ** 2
    width, mlp = v["width"], int(v["width"] * v["mlp_ratio"])
    shapes = [(b * patches, 3 * v["patch_size"] ** 2, width)]  # rows, K, N
    shapes += [(b * (patches + 1), k, n)
               for k, n in ((width, 3 * width), (width, width), (width, mlp), (mlp, width))]
    shapes += [(b, width, v["output_dim"]), (b, v["output_dim"], case.classes)]
    # merged_forward_k3 has 3 clusters; DaWin's mixture at most 3 (fewer when one is empty)
    groups = dict(wise_ft=(1,), merged_forward_k3=(3,), merged_forward_per_sample=(b,),
                  dawin_mixture=(3,), dawin_per_sample=(b,))
    calls = []
    for method, counts in groups.items():
        for g in counts:
            calls += [(method, rows, g, 2, n, k) for rows, k, n in shapes]
    return calls


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Work:
    """Counted work of a set of calls (a compile variant counts once per run)."""

    compiles: set = dataclasses.field(default_factory=set)
    autotune: set = dataclasses.field(default_factory=set)  # (child, key)
    autotune_configs: int = 0
    measurements: int = 0
    cases: int = 0
    numerics: int = 0
    smoke: int = 0
    fixed_s: float = 0.0
    #: compile key -> (strategy, rows, groups, M, N, K, dtype, gluon) of its first call
    calls: dict = dataclasses.field(default_factory=dict)

    def seconds(self) -> float:
        return (len(self.compiles) * COSTS["COMPILE_S"]
                + self.autotune_configs * COSTS["AUTOTUNE_S"]
                + self.measurements * COSTS["MEASURE_S"] + self.cases * COSTS["CASE_S"]
                + self.numerics * COSTS["NUMERICS_CASE_S"] + self.smoke * COSTS["SMOKE_S"]
                + self.fixed_s)

    def add(self, other: Work) -> None:
        self.compiles |= other.compiles
        self.calls = {**other.calls, **self.calls}
        self.autotune |= other.autotune
        self.autotune_configs += other.autotune_configs
        self.measurements += other.measurements
        self.cases += other.cases
        self.numerics += other.numerics
        self.smoke += other.smoke
        self.fixed_s += other.fixed_s


def call_work(work: Work, child: str, strategy: str | None, rows: int, groups: int, m: int,
              n: int, k: int, dtype, gluon: bool) -> str:
    """Count one kernel call (``strategy`` None: the default rule) into ``work``: its
    compile variants and, for autotuned kernels, its autotune key. Returns the strategy."""
    from dawin_fast.kernels import dispatch
    from dawin_fast.kernels.configs import fitting_configs, rows_bucket
    from dawin_fast.kernels.interp_matmul import OLD_STRATEGIES, gpu_combine_block_m

    if strategy is None:
        strategy = _default_strategy(rows, groups, m, n, k, dtype, gluon)
    # A forced "rowscaled" runs the epilogue kernel on Hopper (dispatch.ROWSCALED_HAZARD).
    strategy = dispatch.served_by(strategy, hopper_target(gluon), dtype, False)
    single = groups == 1
    if strategy in OLD_STRATEGIES:
        block_m = gpu_combine_block_m(rows, groups, dtype) if strategy == "combine" else None
        configs = fitting_configs(strategy, m, dtype, False, block_m, True)
        keys = [(strategy, m, single, str(dtype), block_m, i) for i in range(len(configs))]
        work.compiles.update(keys)
        for key in keys:
            work.calls.setdefault(key, (strategy, rows, groups, m, n, k, dtype, gluon))
        key = (child, strategy, n, k, m, rows_bucket(rows), block_m, str(dtype))
        if key not in work.autotune:
            work.autotune.add(key)
            work.autotune_configs += len(configs)
    elif strategy in dispatch.NEW_STRATEGIES:
        config = dispatch.best_config(strategy, rows, groups, m, n, k)
        kernel = kernel_name(strategy, rows, groups, m, n, k, dtype, gluon)
        # Triton specializes an int argument on its divisibility by 16: N = 1000 (the
        # head) compiles apart from N = 768.
        key = (kernel, config, m, single, str(dtype), n % 16 == 0, k % 16 == 0)
        work.compiles.add(key)
        work.calls.setdefault(key, (strategy, rows, groups, m, n, k, dtype, gluon))
    else:  # a strategy this plan does not know (added later): one compile per shape
        work.compiles.add((strategy, m, single, str(dtype), n, k))
    return strategy


def plan_numerics(work: Work, cases: list, child: str, gluon: bool = True) -> None:
    for case in cases:
        call_work(work, child, case.strategy, case.rows, case.groups, case.num_models,
                  case.n_dim, case.k_dim, case.dtype, gluon)
        work.numerics += 1


def plan_layers(work: Work, cases: list, gluon: bool) -> None:
    from dawin_fast.bench import layers as bench

    for case in cases:
        groups = len(bench.group_lengths(case.pattern, case.images, case.tokens))
        work.cases += 1
        for method in layer_methods():
            work.measurements += 1
            strategy = None if method == "fused" else bench.STRATEGY_METHODS.get(method)
            if method == "fused" or strategy:
                call_work(work, "layers", strategy, case.rows, groups, case.num_models,
                          case.out_features, case.in_features, case.dtype, gluon)


def plan_e2e(work: Work, gluon: bool) -> None:
    """ViT-B/32, 1024 images, bf16, M=2: every fused call of the fused methods
    (``e2e_calls``, default rule), and each method's calls at its predicted time."""
    import torch

    from dawin_fast.bench import e2e as bench_e2e

    for _, rows, groups, m, n, k in e2e_calls():
        call_work(work, "e2e", None, rows, groups, m, n, k, torch.bfloat16, gluon)
    for method in bench_e2e.METHODS:
        calls = 1 + bench_e2e.repeats_for(method, "cuda")
        work.fixed_s += calls * E2E_CALL_S.get(method, 1.0) * H100_SLOWER
    work.fixed_s += COSTS["E2E_SETUP_S"]


def ceilings_seconds(copy_bytes_per_s: float = 2.97e12, flops: float = 690e12) -> float:
    """Copy: 3 warm-ups + repeats of 2 x CEILING_COPY_BYTES; GEMM: the same count of 2 n^3
    FLOPs (default: the H100's rates, the slower card); plus allocation and the fill."""
    copies = (3 + CEILING_REPEATS) * 2 * CEILING_COPY_BYTES / copy_bytes_per_s
    gemms = (3 + CEILING_REPEATS) * 2 * CEILING_GEMM ** 3 / flops
    return copies + gemms + 3.0


def smoke_indices(numerics: list[Item]) -> list[int]:
    """One Gluon item per Gluon kernel (the first, in priority order): its smoke launch."""
    first: dict[str, int] = {}
    for item in numerics:
        if item.gluon:
            first.setdefault(item.kernel, item.index)
    return list(first.values())


def plan(budget_s: float = DEFAULT_BUDGET_S, gluon: bool = True) -> dict:
    """The stage's work on a cold cache: parts in order, with the numerics cases that fit
    (``core``, in priority order; Gluon ones in ``gluon``) and those left for
    ``numerics_more``."""
    fixed = Work()
    fixed.fixed_s += (COSTS["STARTUP_S"] + COSTS["RENDER_S"] + COSTS["MARGIN_S"]
                      + COSTS["SELFCHECK_S"] + ceilings_seconds())
    children = ["ceilings", "numerics", "layers", "e2e"] + (["gluon"] if gluon else [])
    fixed.fixed_s += len(children) * COSTS["CHILD_S"]
    cases = numerics_cases(toy=False)
    described = items("numerics", toy=False, gluon=gluon)
    gluon_cases = [i for i, item in enumerate(described) if item.gluon]
    smoke = smoke_indices(described) if gluon else []
    layers = Work()
    plan_layers(layers, layer_cases(toy=False), gluon)
    e2e = Work()
    plan_e2e(e2e, gluon)

    def total(chosen: list[int]) -> tuple[float, Work]:
        work = Work(fixed_s=fixed.fixed_s)
        work.smoke = len(smoke)
        plan_numerics(work, [cases[i] for i in chosen if i not in gluon_cases], "numerics",
                      gluon=False)
        plan_numerics(work, [cases[i] for i in chosen if i in gluon_cases], "gluon",
                      gluon=True)
        work.add(layers)
        work.add(e2e)
        return work.seconds(), work

    core: list[int] = []  # in priority order; a case that does not fit is left, not a stop
    for i in range(len(cases)):
        if total(core + [i])[0] <= budget_s:
            core.append(i)
    seconds, work = total(core)
    parts = {}
    for name, part in (("layers", layers), ("e2e", e2e)):
        parts[name] = dict(compile_variants=len(part.compiles),
                           autotuned_configs=part.autotune_configs,
                           measurements=part.measurements, seconds_alone=round(part.seconds()))
    numerics_work = Work()
    plan_numerics(numerics_work, [cases[i] for i in core if i not in gluon_cases],
                  "numerics", gluon=False)
    gluon_work = Work(smoke=len(smoke))
    plan_numerics(gluon_work, [cases[i] for i in core if i in gluon_cases], "gluon", True)
    parts["numerics"] = dict(cases=numerics_work.numerics,
                             seconds_alone=round(numerics_work.seconds()))
    parts["gluon"] = dict(smoke=len(smoke), cases=gluon_work.numerics,
                          seconds_alone=round(gluon_work.seconds()))
    left = [i for i in range(len(cases)) if i not in core]
    return dict(budget_s=budget_s, estimated_s=round(seconds), device="H100 (the slower card)",
                core_indices=[i for i in core if i not in gluon_cases],
                gluon_indices=[i for i in core if i in gluon_cases], smoke_indices=smoke,
                calls=list(work.calls.values()), left_indices=left,
                numerics_total=len(cases), children=children,
                compile_variants=len(work.compiles), autotune_keys=len(work.autotune),
                autotuned_configs=work.autotune_configs, measurements=work.measurements,
                numerics_cases=work.numerics, e2e_calls=len(e2e_calls()),
                ceilings_s=round(ceilings_seconds(), 1), fixed_s=round(fixed.fixed_s),
                parts=parts, core=[cases[i].id for i in core],
                left=[cases[i].id for i in left])


def _compact(ids: list[str]) -> list[str]:
    """Case ids grouped by specialization: 'bfloat16 M2 per_sample: swapab x4, ...'."""
    groups: dict[str, dict[str, int]] = {}
    for case_id in ids:
        strategy, dtype, m, _, _, _, grouping = case_id.split("-")
        by = groups.setdefault(f"{dtype} {m} {grouping}", {})
        by[strategy] = by.get(strategy, 0) + 1
    return [f"{key}: " + ", ".join(f"{s} x{n}" for s, n in by.items())
            for key, by in groups.items()]


def print_plan(budget_s: float = DEFAULT_BUDGET_S, gluon: bool = True) -> dict:
    p = plan(budget_s, gluon)
    print(f"first-contact plan on an H100 (no GPU used; cold cache; measured dispatch off; "
          f"costs {COSTS})")
    print(f"  self-check: {COSTS['SELFCHECK_S']:.0f} s; ceilings: copy 2 x "
          f"{CEILING_COPY_BYTES >> 30} GiB and bf16 {CEILING_GEMM}^3 GEMM, "
          f"{3 + CEILING_REPEATS} each: {p['ceilings_s']} s")
    print(f"  numerics: {len(p['core'])} of {p['numerics_total']} production cases fit "
          f"(each: error bound + 10-launch repeat; {len(p['gluon_indices'])} of them Gluon, "
          f"after {len(p['smoke_indices'])} smoke launches); in run order:")
    for line in _compact(p["core"]):
        print(f"    {line}")
    if p["left"]:
        print(f"  numerics_more (after e2e, only while time remains): {len(p['left'])} cases:")
        for line in _compact(p["left"]):
            print(f"    {line}")
    for name, part in p["parts"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in part.items()))
    print(f"  total: {len(p['children'])} children, {p['compile_variants']} compile variants, "
          f"{p['autotuned_configs']} autotune benchmarks ({p['autotune_keys']} keys), "
          f"{p['measurements']} timed calls, {p['numerics_cases']} numerics cases, "
          f"{p['e2e_calls']} distinct e2e calls, fixed {p['fixed_s']} s")
    print(f"first-contact: estimated {p['estimated_s']} s")
    return p


def predictions() -> dict:
    """P1-P4 cases' predicted fused / cuBLAS ratios (``kernels/cost_model.py``: the traffic
    model, not a measurement) on each lent card, and each card's assumed ceilings."""
    from dawin_fast.bench import layers as bench
    from dawin_fast.kernels import cost_model

    out: dict = {}
    for card in (cost_model.H100, cost_model.H200):
        rows = []
        with cost_model.using(card):
            for case in layer_cases(toy=False):
                groups = bench.group_lengths(case.pattern, case.images, case.tokens)
                model_case = cost_model.Case(case.id, tuple(groups), case.num_models,
                                             case.out_features, case.in_features)
                base = cost_model.cublas(model_case).seconds
                best = {d: (name, p.seconds / base)
                        for d, (name, p) in cost_model.best(model_case).items()}
                rows.append(dict(case=case.id, target=case.target, cublas_ms=base * 1e3,
                                 **{f"{d}_vs_cublas": round(r, 2) for d, (_, r) in best.items()},
                                 **{f"{d}_config": n for d, (n, _) in best.items()}))
        out[card.name] = dict(copy_tb_per_s=card.hbm_bytes_per_s / 1e12,
                              gemm_tflop_per_s=card.tensor_flops / 1e12,
                              l2_mb=card.l2_bytes / 1e6, layers=rows)
    return out


# --------------------------------------------------------------------------- the children


class Records:
    """Appends one JSON line per record, flushed at once (a killed child loses nothing)."""

    def __init__(self, path: Path, part: str) -> None:
        self.path, self.part = path, part

    def write(self, record: dict) -> None:
        record = dict(record, part=self.part, time=round(time.time(), 3))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")


class CacheCounter:
    """Triton's compilation listener: disk-cache hits and misses of this child."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self.installed = False
        try:
            from triton import knobs

            knobs.compilation.listener = self
            self.installed = True
        except (ImportError, AttributeError):
            pass

    def __call__(self, *, src, metadata, metadata_group, times, cache_hit, **_) -> None:
        name = getattr(src, "name", None) or str(metadata.get("name", "?"))
        book = self.hits if cache_hit else self.misses
        book[name] = book.get(name, 0) + 1

    def record(self) -> dict:
        return dict(kind="cache", listener=self.installed, hits=sum(self.hits.values()),
                    misses=sum(self.misses.values()), hits_by_kernel=self.hits,
                    misses_by_kernel=self.misses,
                    cache_dir=os.environ.get("TRITON_CACHE_DIR"))


class LaunchHang(Exception):
    """A first launch still running past its deadline."""


class CudaDevice:
    """Waits for the work queued so far by polling a CUDA event, at most ``deadline_s``
    (on a CPU, or in the toy run: returns at once)."""

    def __init__(self, deadline_s: float = LAUNCH_DEADLINE_S) -> None:
        self.deadline_s = deadline_s

    def wait(self, what: str) -> None:
        import torch

        if not torch.cuda.is_available():
            return
        event = torch.cuda.Event()
        event.record()
        start = time.time()
        while not event.query():
            if time.time() - start > self.deadline_s:
                raise LaunchHang(f"{what}: not finished {self.deadline_s:.0f} s after launch")
            time.sleep(0.002)


def _fake_spec() -> dict | None:
    path = os.environ.get(FAKE_ENV)
    return json.loads(Path(path).read_text(encoding="utf-8")) if path else None


class FakeDevice:
    """The fake device of the driver's CPU test: each launch of a kernel named in the
    spec's ``faults`` raises a CUDA error ("raise"), never finishes ("hang": its event
    completes after ``hang_s``) or returns wrong values ("wrong")."""

    def __init__(self, spec: dict) -> None:
        self.faults = spec.get("faults", {})
        self.deadline_s = float(spec.get("launch_deadline_s", LAUNCH_DEADLINE_S))
        self.hang_s = float(spec.get("hang_s", 3600.0))
        self.done_at = 0.0

    def launch(self, kernel: str) -> bool:
        """Whether the values are right."""
        fault = self.faults.get(kernel)
        if fault == "raise":
            raise RuntimeError("CUDA error: an illegal memory access was encountered "
                               f"(fake device, kernel {kernel})")
        self.done_at = time.time() + (self.hang_s if fault == "hang" else 0.0)
        return fault != "wrong"

    def wait(self, what: str) -> None:
        start = time.time()
        while time.time() < self.done_at:
            if time.time() - start > self.deadline_s:
                raise LaunchHang(f"{what}: not finished {self.deadline_s:.0f} s after launch")
            time.sleep(0.01)


def is_cuda_error(error: BaseException) -> bool:
    """An error after which the CUDA context is lost (the child must end)."""
    text = f"{type(error).__name__}: {error}"
    return any(s in text for s in ("CUDA error", "AcceleratorError", "CUDA_ERROR",
                                   "illegal memory access", "unspecified launch failure"))


def _deadline() -> float:
    return float(os.environ.get("DAWIN_BENCH_DEADLINE", "inf"))


def failure_records(item: Item, message: str) -> list[dict]:
    """What an item that could not finish leaves: the records its work would have written,
    failed (numerics: both the error-bound and the repeat record)."""
    info = dict(case=item.case, method=item.method, kernel=item.kernel, item=item.key,
                error=message)
    if item.kind == "numerics":
        return [dict(info, kind="numerics", passed=False),
                dict(info, kind="repeat", tags=["repeat"], passed=False)]
    if item.kind == "smoke":
        return [dict(info, kind="smoke", passed=False)]
    if item.kind == "ceiling":
        return [dict(info, kind="ceiling", median_ms=None)]
    if item.kind == "e2e":
        return [dict(info, target=E2E_TARGETS.get(item.method, "P5"), ms_per_image=None)]
    return [dict(info, median_ms=None)]


def run_items(records: Records, work: list[tuple[Item, Callable[[], Iterator[dict]]]]) -> None:
    """Each item: a ``start`` record, its records, a ``done`` record. An item past the
    stage's deadline is skipped and says so; an exception is recorded and the next item
    runs, except after a CUDA error or a hang: then the child ends at once (its exit code
    tells the driver which), the context being lost or blocked."""
    for item, work_fn in work:
        base = dict(case=item.case, method=item.method, kernel=item.kernel, item=item.key)
        if time.time() > _deadline():
            for rec in failure_records(item, ""):
                rec.pop("error")
                records.write(dict(rec, skipped="the stage's time budget ran out before "
                                                "this case (DAWIN_BENCH_DEADLINE)"))
            continue
        records.write(dict(base, kind="start"))
        try:
            for record in work_fn():
                records.write(dict(record, item=item.key))
        except LaunchHang as error:
            records.write(dict(base, kind="fault", fault="hang", error=str(error)))
            os._exit(HANG_EXIT)
        except Exception as error:  # noqa: BLE001 (recorded; the next item runs)
            message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            if is_cuda_error(error):
                records.write(dict(base, kind="fault", fault="cuda error", error=message))
                os._exit(CUDA_ERROR_EXIT)
            for rec in failure_records(item, message):
                records.write(rec)
        records.write(dict(base, kind="done"))


# ---------------------------------------------------------------- the work of each item


def _ceiling_work(index: int, toy: bool, device) -> Iterator[dict]:
    import torch

    from dawin_fast.bench import layers as bench

    cuda = torch.cuda.is_available() and not toy

    def timed(fn) -> dict:
        fn()
        device.wait(f"ceiling {CEILINGS[index]}")
        if cuda:
            return bench.time_cuda(fn, min_repeats=CEILING_REPEATS, min_total_ms=0,
                                   max_repeats=CEILING_REPEATS)
        return bench.time_wall(fn, repeats=3)

    where = "cuda" if cuda else "cpu"
    note = "CPU toy size: the number means nothing"
    if index == 0:
        size = CEILING_COPY_BYTES if cuda else 2**24
        buffers = [torch.empty(size, dtype=torch.uint8, device=where).random_()]
        buffers.append(torch.empty_like(buffers[0]))
        copy = timed(lambda: buffers[1].copy_(buffers[0]))
        yield dict(kind="ceiling", case="device copy", bytes_moved=2 * size,
                   gb_per_s=2 * size / (copy["median_ms"] * 1e-3) / 1e9, device=where,
                   note="bytes read + written; L2 flushed before each copy" if cuda else note,
                   **copy)
        return
    n = CEILING_GEMM if cuda else 256
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=where, dtype=dtype)
    b = torch.randn(n, n, device=where, dtype=dtype)
    gemm = timed(lambda: a @ b)
    yield dict(kind="ceiling", case=f"{str(dtype).removeprefix('torch.')} GEMM {n}^3",
               flops=2 * n ** 3, tflop_per_s=2 * n ** 3 / (gemm["median_ms"] * 1e-3) / 1e12,
               device=where, note="random data" if cuda else note, **gemm)


def _numerics_work(case, device) -> Iterator[dict]:
    """numerics.check with its first launch waited for under the deadline."""
    from dawin_fast.bench import numerics

    original = numerics._run
    first = [True]

    def guarded(case, inputs):
        out = original(case, inputs)
        if first[0]:
            first[0] = False
            device.wait(f"first launch of {case.id}")
        return out

    numerics._run = guarded
    try:
        yield from numerics.check(case)
    finally:
        numerics._run = original


def _smoke_work(case, device) -> Iterator[dict]:
    """One launch at a real shape, waited for under the deadline, against the reference."""
    from dawin_fast.bench import numerics

    inputs = numerics.make_inputs(case)
    ref, scale = numerics.reference(inputs)
    bound = numerics.error_bound(ref, scale, case.dtype)
    out = numerics._run(case, inputs)
    device.wait(f"smoke launch of {case.id}")
    yield dict(case.info(), kind="smoke", method=f"fused_{case.strategy}",
               **numerics.compare(out, ref, bound))


class _LayerState:
    prepared = None


def _layer_work(case, method: str, state: _LayerState, device) -> Iterator[dict]:
    from dawin_fast.bench import layers as bench

    target = layer_target(case)
    if state.prepared is None or state.prepared.case != case:
        state.prepared = bench.prepare(case)
    try:  # the first launch, waited for under the deadline (then run_one times it)
        fn = bench.build(method, case, state.prepared.inputs)
    except bench.Unavailable:
        pass
    else:
        fn()
        device.wait(f"first launch of {case.id} {method}")
    yield dict(bench.run_one(method, state.prepared), target=target)


class _E2EState:
    setup = None


def _e2e_work(method: str, state: _E2EState, toy: bool, device) -> Iterator[dict]:
    import torch

    from dawin_fast.bench import e2e as bench_e2e

    case = bench_e2e.default_case()
    if toy and case.device == "cuda":
        raise ValueError("--toy runs on a CPU only")
    state.setup = state.setup or bench_e2e.make_setup(case)
    fn, count = bench_e2e.build(method, state.setup)
    fn()
    device.wait(f"first call of {method}")
    result = bench_e2e.measure(fn, case.device, repeats=bench_e2e.repeats_for(method,
                                                                             case.device))
    yield dict(bench_e2e.record(state.setup, method, count, result),
               target=E2E_TARGETS.get(method, "P5"))
    if case.device == "cuda":
        torch.cuda.empty_cache()


def _fake_work(item: Item, device: FakeDevice) -> Iterator[dict]:
    """What the real work of an item writes, with made-up values (the driver's test)."""
    right = device.launch(item.kernel)
    device.wait(f"first launch of {item.case}")
    info = dict(case=item.case, method=item.method, kernel=item.kernel)
    if item.kind in ("numerics", "smoke"):
        yield dict(info, kind=item.kind, passed=right,
                   max_err_over_bound=0.4 if right else 9.0)
        if item.kind == "numerics":
            yield dict(info, kind="repeat", tags=["repeat"], launches=10, passed=right,
                       differing_elements=[0] * 9)
    elif item.kind == "ceiling":
        yield dict(info, kind="ceiling", median_ms=1.0, gb_per_s=1.0, note="fake device")
    elif item.kind == "e2e":
        yield dict(info, target=E2E_TARGETS.get(item.method, "P5"), ms_per_image=1.0,
                   median_ms=1.0, images=1, batch_images=1)
    else:
        yield dict(info, median_ms=1.0 if right else None,
                   **({} if right else {"error": "wrong values (fake device)"}))


def child_work(part: str, toy: bool, indices: list[int] | None, smoke: list[int],
               gluon: bool) -> list[tuple[Item, Callable[[], Iterator[dict]]]]:
    """The (item, work) pairs of a child: the smoke launches first, then its items."""
    kind = PART_KIND[part]
    listed = items(kind, toy, gluon)
    chosen = [listed[i] for i in indices] if indices is not None else listed
    spec = _fake_spec()
    work: list[tuple[Item, Callable[[], Iterator[dict]]]] = []
    if spec is not None:
        fake = FakeDevice(spec)
        for i in smoke:
            item = dataclasses.replace(listed[i], kind="smoke")
            work.append((item, lambda item=item: _fake_work(item, fake)))
        for item in chosen:
            work.append((item, lambda item=item: _fake_work(item, fake)))
        return work
    device = CudaDevice()
    if kind == "numerics":
        cases = numerics_cases(toy)
        for i in smoke:
            item = dataclasses.replace(listed[i], kind="smoke")
            work.append((item, lambda c=cases[i]: _smoke_work(c, device)))
        for item in chosen:
            work.append((item, lambda c=cases[item.index]: _numerics_work(c, device)))
    elif kind == "ceiling":
        for item in chosen:
            work.append((item, lambda i=item.index: _ceiling_work(i, toy, device)))
    elif kind == "layer":
        cases, pairs, state = layer_cases(toy), layer_items(toy), _LayerState()
        for item in chosen:
            c, method = pairs[item.index]
            work.append((item, lambda c=cases[c], m=method: _layer_work(c, m, state, device)))
    else:
        state = _E2EState()
        for item in chosen:
            work.append((item, lambda m=item.method: _e2e_work(m, state, toy, device)))
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=(*PARTS, "plan"))
    parser.add_argument("--records", help="JSON-lines file the records are appended to")
    parser.add_argument("--toy", action="store_true", help="CPU sizes (the dry run)")
    parser.add_argument("--items", help="comma-separated item indices (default: all)")
    parser.add_argument("--smoke", default="",
                        help="numerics parts: item indices to smoke-launch first")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S)
    args = parser.parse_args(argv)
    if args.part == "plan":
        print_plan(args.budget)
        return 0
    records = Records(Path(args.records), args.part)
    counter = CacheCounter() if _fake_spec() is None else None
    indices = [int(i) for i in args.items.split(",") if i] if args.items is not None else None
    smoke = [int(i) for i in args.smoke.split(",") if i]
    gluon = os.environ.get("DAWIN_FAST_GLUON", "0") == "1"
    try:
        run_items(records, child_work(args.part, args.toy, indices, smoke, gluon))
    finally:  # also on SIGINT past the part's limit
        if counter is not None:
            records.write(counter.record())
    return 0


if __name__ == "__main__":
    sys.exit(main())
