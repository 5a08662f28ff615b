"""First GPU contact in one device call (issue 19): the work list, its plan, its runner.

``benchmarks/gpu_session.py``'s ``first-contact`` stage runs the parts below, each in its
own child process (a CUDA error that ends one context cannot take the rest down), most
important first, under a hard budget (450 s of work by default). Each child appends its
records to one JSON-lines file as they come, so a run cut at any point leaves them.

1. ``ceilings``: device copy bandwidth and the bf16 8192^3 GEMM rate.
2. ``numerics``: ``dawin_fast.bench.numerics`` at production shapes, every strategy of the
   launcher forced, error against an element-wise bound and 10-launch repeatability
   (records tagged ``repeat``): the ``core`` subset that the plan fits in the budget.
3. ``layers``: P1-P4 at ViT-B/32 shapes, side by side: the default fused op, each
   strategy forced, cuBLAS on the pre-merged weight, eager materialize / the per-group loop.
4. ``e2e``: P5 and P6, whole DaWin on ViT-B/32 (``dawin_fast.bench.e2e``).
5. ``numerics_more``: the numerics cases the plan left out, while time remains.

The plan (``plan``) counts the work from the same dispatch and config rules the kernels
use: Triton compile variants (each once per run: the children share one cache directory),
autotune benchmarks (once per key and child), timed calls, numerics cases, the e2e calls,
child start-ups. It assumes a cold cache: a carried warm cache can only make it shorter.

    python -m benchmarks.first_contact PART --records FILE [--toy] [--cases I,J,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

PARTS = ("ceilings", "numerics", "layers", "e2e", "numerics_more")
DEFAULT_BUDGET_S = 450.0

# Cost assumptions of the plan, seconds (stated so that the first run can correct them):
# COMPILE_S one Triton compile variant (measured here, 2026-12-03: the 168 variants of this
# stage, Triton 3.6.0, sm_90a, `python -m benchmarks.triton_cache build .tcache --jobs 2`,
# in 86.6 s = 1.03 s per variant per core; 1.5 allows a slower core and the JIT's own
# work in a real launch; the compile gate's 2.5 s median includes ptxas -v and its
# analysis); AUTOTUNE_S one config
# benchmarked by triton.autotune (do_bench: 25 ms warm-up + 100 ms); MEASURE_S one timed
# (case, method) of time_cuda; CASE_S one layer case's inputs and float32 reference;
# NUMERICS_CASE_S one numerics case (inputs, fp32 reference and scale, 10 launches, the
# comparisons, at 12 800 x 3072); CHILD_S a child's start (import torch, dawin_fast,
# open_clip, first CUDA context); STARTUP_S the wheels, the driver and its environment
# probe; RENDER_S the final render; E2E_SETUP_S two ViT-B/32 built and moved to the GPU.
COSTS = dict(COMPILE_S=1.5, AUTOTUNE_S=0.15, MEASURE_S=0.35, CASE_S=0.5, NUMERICS_CASE_S=0.6,
             CHILD_S=10.0, STARTUP_S=25.0, RENDER_S=2.0, E2E_SETUP_S=20.0, MARGIN_S=15.0)
# e2e: seconds per call on the H200 (predictions from DESIGN §3's 8.24 ms per 256 images
# of the plain forward: 1024 images ~ 33 ms; DaWin ~3-4 forwards; the rebuild loops load a
# 176 MB state dict per cluster / per sample), and calls per method (warm-up + repeats).
E2E_CALL_S = dict(plain_forward=0.04, wise_ft=0.06, dawin_mixture=0.2, dawin_per_sample=0.2,
                  merged_forward_k3=0.06, merged_forward_per_sample=0.06,
                  rebuild_per_cluster=0.6, rebuild_per_sample=4.0)
CEILING_COPY_BYTES = 4 * 2**30  # per direction: 8 GiB moved per copy, far past the L2
CEILING_GEMM = 8192
CEILING_REPEATS = 20


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


def numerics_cases(toy: bool) -> list:
    from dawin_fast.bench import numerics

    return numerics.toy_cases() if toy else numerics.production_cases()


E2E_TARGETS = {"merged_forward_k3": "P6", "merged_forward_per_sample": "P6"}


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
    fixed_s: float = 0.0
    #: compile key -> (strategy, rows, groups, M, N, K, dtype, gluon) of its first call
    calls: dict = dataclasses.field(default_factory=dict)

    def seconds(self) -> float:
        return (len(self.compiles) * COSTS["COMPILE_S"]
                + self.autotune_configs * COSTS["AUTOTUNE_S"]
                + self.measurements * COSTS["MEASURE_S"] + self.cases * COSTS["CASE_S"]
                + self.numerics * COSTS["NUMERICS_CASE_S"] + self.fixed_s)


def call_work(work: Work, child: str, strategy: str | None, rows: int, groups: int, m: int,
              n: int, k: int, dtype, gluon: bool) -> str:
    """Count one kernel call (``strategy`` None: the default rule) into ``work``: its
    compile variants and, for autotuned kernels, its autotune key. Returns the strategy."""
    from dawin_fast.kernels import dispatch
    from dawin_fast.kernels.configs import fitting_configs, rows_bucket
    from dawin_fast.kernels.interp_matmul import (
        OLD_STRATEGIES,
        choose_strategy,
        gpu_combine_block_m,
    )

    target = dispatch.Target(cuda=True, half=True, gluon=gluon)
    if strategy is None:
        strategy = choose_strategy(rows, groups, m, dtype, False, True, n, k, target)
    # A forced "rowscaled" runs the epilogue kernel on Hopper (dispatch.ROWSCALED_HAZARD).
    strategy = dispatch.served_by(strategy, target, dtype, False)
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
        kernel = f"{strategy} gluon" if strategy in ("swapab", "wstat") and gluon else strategy
        key = (kernel, config, m, single, str(dtype))
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
    """ViT-B/32, 1024 images of 50 tokens, bf16, M=2: every fused layer call of the fused
    methods (default rule), and each method's calls at its predicted time."""
    import torch

    from dawin_fast.bench import e2e as bench_e2e

    rows = 1024 * 50
    shapes = ((768, 2304), (768, 768), (768, 3072), (3072, 768), (3072, 768))  # K, N
    for groups in (1, 3, 1024):  # wise_ft; K = 3 clusters; per sample
        for k, n in shapes:
            call_work(work, "e2e", None, rows, groups, 2, n, k, torch.bfloat16, gluon)
    for method in bench_e2e.METHODS:
        calls = 1 + bench_e2e.repeats_for(method, "cuda")
        work.fixed_s += calls * E2E_CALL_S.get(method, 1.0)
    work.fixed_s += COSTS["E2E_SETUP_S"]


def ceilings_seconds() -> float:
    """Copy: 3 warm-ups + repeats of 2 x CEILING_COPY_BYTES at 4.3 TB/s; GEMM: the same
    count of 2 n^3 FLOPs at 790 TFLOP/s; plus allocation and the random fill."""
    copies = (3 + CEILING_REPEATS) * 2 * CEILING_COPY_BYTES / 4.3e12
    gemms = (3 + CEILING_REPEATS) * 2 * CEILING_GEMM ** 3 / 790e12
    return copies + gemms + 3.0


def plan(budget_s: float = DEFAULT_BUDGET_S, gluon: bool = True) -> dict:
    """The stage's work on a cold cache: parts in order, with the numerics cases that fit
    (``core``, in priority order) and those left for ``numerics_more``."""
    fixed = Work()
    fixed.fixed_s += COSTS["STARTUP_S"] + COSTS["RENDER_S"] + COSTS["MARGIN_S"]
    fixed.fixed_s += 4 * COSTS["CHILD_S"] + ceilings_seconds()
    # The numerics child compiles first; the others reuse its variants from the run's cache.
    numerics = numerics_cases(toy=False)
    layers = Work()
    plan_layers(layers, layer_cases(toy=False), gluon)
    e2e = Work()
    plan_e2e(e2e, gluon)

    def total(chosen: list[int]) -> tuple[float, Work]:
        work = Work(fixed_s=fixed.fixed_s)
        plan_numerics(work, [numerics[i] for i in chosen], "numerics")
        for part in (layers, e2e):
            work.compiles |= part.compiles
            work.calls = {**part.calls, **work.calls}
            work.autotune |= part.autotune
            work.autotune_configs += part.autotune_configs
            work.measurements += part.measurements
            work.cases += part.cases
            work.fixed_s += part.fixed_s
        return work.seconds(), work

    core: list[int] = []  # in priority order; a case that does not fit is left, not a stop
    for i in range(len(numerics)):
        if total(core + [i])[0] <= budget_s:
            core.append(i)
    seconds, work = total(core)
    parts = {}
    for name, part in (("layers", layers), ("e2e", e2e)):
        parts[name] = dict(compile_variants=len(part.compiles),
                           autotuned_configs=part.autotune_configs,
                           measurements=part.measurements, seconds_alone=round(part.seconds()))
    left = [i for i in range(len(numerics)) if i not in core]
    # What the numerics child may take: the estimate less everything else (the variants it
    # shares with layers and e2e are charged to those, so this errs low).
    parts["numerics"] = dict(seconds_alone=max(round(seconds - fixed.fixed_s - sum(
        p["seconds_alone"] for p in parts.values())), 30))
    return dict(budget_s=budget_s, estimated_s=round(seconds), core_indices=core,
                calls=list(work.calls.values()),
                left_indices=left, numerics_total=len(numerics),
                compile_variants=len(work.compiles), autotune_keys=len(work.autotune),
                autotuned_configs=work.autotune_configs, measurements=work.measurements,
                numerics_cases=work.numerics, ceilings_s=round(ceilings_seconds(), 1),
                fixed_s=round(fixed.fixed_s), parts=parts,
                core=[numerics[i].id for i in core], left=[numerics[i].id for i in left])


def _compact(ids: list[str]) -> list[str]:
    """Case ids grouped by specialization: 'bfloat16 M2 per_sample: rowscaled x4, ...'."""
    groups: dict[str, dict[str, int]] = {}
    for case_id in ids:
        strategy, dtype, m, _, _, _, grouping = case_id.split("-")
        by = groups.setdefault(f"{dtype} {m} {grouping}", {})
        by[strategy] = by.get(strategy, 0) + 1
    return [f"{key}: " + ", ".join(f"{s} x{n}" for s, n in by.items())
            for key, by in groups.items()]


def print_plan(budget_s: float = DEFAULT_BUDGET_S, gluon: bool = True) -> dict:
    p = plan(budget_s, gluon)
    print(f"first-contact plan (no GPU used; cold cache; costs {COSTS})")
    print(f"  ceilings: copy 2 x {CEILING_COPY_BYTES >> 30} GiB and bf16 {CEILING_GEMM}^3 "
          f"GEMM, {3 + CEILING_REPEATS} each: {p['ceilings_s']} s")
    print(f"  numerics: {len(p['core'])} of {p['numerics_total']} production cases fit "
          f"(each: error bound + 10-launch repeat); in run order:")
    for line in _compact(p["core"]):
        print(f"    {line}")
    if p["left"]:
        print(f"  numerics_more (after e2e, only while time remains): {len(p['left'])} cases:")
        for line in _compact(p["left"]):
            print(f"    {line}")
    for name, part in p["parts"].items():
        if name != "numerics":
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in part.items()))
    print(f"  total: {p['compile_variants']} compile variants, {p['autotuned_configs']} "
          f"autotune benchmarks ({p['autotune_keys']} keys), {p['measurements']} timed "
          f"calls, {p['numerics_cases']} numerics cases, fixed {p['fixed_s']} s")
    print(f"first-contact: estimated {p['estimated_s']} s")
    return p


# --------------------------------------------------------------------------- the runner


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


def _deadline() -> float:
    return float(os.environ.get("DAWIN_BENCH_DEADLINE", "inf"))


def _past_deadline(records: Records, info: dict) -> bool:
    if time.time() <= _deadline():
        return False
    records.write(dict(info, skipped="the stage's time budget ran out before this case "
                                     "(DAWIN_BENCH_DEADLINE)"))
    return True


def run_ceilings(records: Records, toy: bool) -> None:
    import torch

    from dawin_fast.bench import layers as bench

    cuda = torch.cuda.is_available() and not toy
    device = "cuda" if cuda else "cpu"
    size = CEILING_COPY_BYTES if cuda else 2**24
    n = CEILING_GEMM if cuda else 256
    buffers = [torch.empty(size, dtype=torch.uint8, device=device).random_()]
    buffers.append(torch.empty_like(buffers[0]))

    def timed(fn) -> dict:
        if cuda:
            return bench.time_cuda(fn, min_repeats=CEILING_REPEATS, min_total_ms=0,
                                   max_repeats=CEILING_REPEATS)
        return bench.time_wall(fn, repeats=3)

    copy = timed(lambda: buffers[1].copy_(buffers[0]))
    records.write(dict(kind="ceiling", case="device copy", bytes_moved=2 * size,
                       gb_per_s=2 * size / (copy["median_ms"] * 1e-3) / 1e9, device=device,
                       note="bytes read + written; L2 flushed before each copy" if cuda
                       else "CPU toy size: the number means nothing", **copy))
    buffers.clear()
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    gemm = timed(lambda: a @ b)
    records.write(dict(kind="ceiling", case=f"{str(dtype).removeprefix('torch.')} GEMM {n}^3",
                       flops=2 * n ** 3, tflop_per_s=2 * n ** 3 / (gemm["median_ms"] * 1e-3)
                       / 1e12, device=device, note="random data" if cuda
                       else "CPU toy size: the number means nothing", **gemm))


def run_numerics(records: Records, toy: bool, indices: list[int] | None) -> None:
    from dawin_fast.bench import numerics

    cases = numerics_cases(toy)
    chosen = [cases[i] for i in indices] if indices is not None else cases
    for case in chosen:
        info = dict(case.info(), kind="numerics", method=f"fused_{case.strategy}")
        if _past_deadline(records, info):
            continue
        try:
            for record in numerics.check(case):
                records.write(record)
        except Exception as error:  # noqa: BLE001 (recorded; the next case runs)
            message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            records.write(dict(info, passed=False, error=message))
            records.write(dict(info, kind="repeat", tags=["repeat"], passed=False,
                               error=f"not run: {message}"))


def run_layers(records: Records, toy: bool) -> None:
    from dawin_fast.bench import layers as bench

    for case in layer_cases(toy):
        target = layer_target(case)
        prepared = None
        for method in layer_methods():
            info = dict(case.info(), target=target, method=method, median_ms=None)
            if _past_deadline(records, info):
                continue
            try:
                prepared = prepared or bench.prepare(case)
                records.write(dict(bench.run_one(method, prepared), target=target))
            except Exception as error:  # noqa: BLE001 (recorded; the next method runs)
                records.write(dict(info, error=f"{type(error).__name__}: {error}"[:300]))


def run_e2e(records: Records, toy: bool) -> None:
    import torch

    from dawin_fast.bench import e2e as bench_e2e

    case = bench_e2e.default_case()
    if toy and case.device == "cuda":
        raise ValueError("--toy runs on a CPU only")
    setup = bench_e2e.make_setup(case)
    for method in bench_e2e.METHODS:
        info = dict(case=case.id, method=method, target=E2E_TARGETS.get(method, "P5"),
                    ms_per_image=None)
        if _past_deadline(records, info):
            continue
        try:
            fn, count = bench_e2e.build(method, setup)
            result = bench_e2e.measure(fn, case.device,
                                       repeats=bench_e2e.repeats_for(method, case.device))
            records.write(dict(bench_e2e.record(setup, method, count, result),
                               target=info["target"]))
        except Exception as error:  # noqa: BLE001 (recorded; the next method runs)
            records.write(dict(info, error=f"{type(error).__name__}: {error}"[:300]))
        if case.device == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=(*PARTS, "plan"))
    parser.add_argument("--records", help="JSON-lines file the records are appended to")
    parser.add_argument("--toy", action="store_true", help="CPU sizes (the dry run)")
    parser.add_argument("--cases", help="numerics: comma-separated case indices")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S)
    args = parser.parse_args(argv)
    if args.part == "plan":
        print_plan(args.budget)
        return 0
    records = Records(Path(args.records), args.part)
    counter = CacheCounter()
    indices = [int(i) for i in args.cases.split(",") if i] if args.cases else None
    try:
        if args.part == "ceilings":
            run_ceilings(records, args.toy)
        elif args.part in ("numerics", "numerics_more"):
            run_numerics(records, args.toy, indices)
        elif args.part == "layers":
            run_layers(records, args.toy)
        else:
            run_e2e(records, args.toy)
    finally:  # also on SIGINT past the part's limit
        records.write(counter.record())
    return 0


if __name__ == "__main__":
    sys.exit(main())
