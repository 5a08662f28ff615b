"""Fused interpolation linear vs its baselines, all timed in the same run.

    python -m pytest benchmarks/test_bench_interp_linear.py --benchmark-enable \\
        --benchmark-json benchmarks/results.json
    python -m benchmarks.render benchmarks/results.json --command "<that command>" \\
        --output benchmarks/RESULTS.md

With ``--benchmark-enable`` each test times its method side by side with the baselines it
is compared with, premerged and fused, in alternating rounds (``dawin_fast.bench.layers
.run_case``): the median ratios over rounds and their spread (``vs_premerged``,
``vs_fused``), the times, the load average and a ``noise`` note when the numbers are noisy
go into ``extra_info`` with the case's parameters; pytest-benchmark also times a
synchronised call. On a GPU each round's sample is the median of CUDA-event-timed calls,
the L2 flushed before each. Before
timing, every method's output is checked against a float32 reference (its relative error
is recorded), so a method that computes something else cannot win. With benchmarks
disabled (the default in pytest.ini) each case runs once: the harness is tested.
``benchmarks/gpu_session.py`` runs this file stage by stage on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from dawin_fast.bench import layers as bench

CASES = bench.default_cases()


@pytest.mark.parametrize("method", bench.METHODS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interp_linear(benchmark, case, method):
    if method == "materialize_compiled" and case.device == "cuda" and benchmark.disabled:
        pytest.skip("max-autotune compiles take minutes per shape on a GPU: only when timing "
                    "(the CPU run covers this harness path)")
    prepared = bench.prepare(case)
    try:
        fn = bench.build(method, case, prepared.inputs)
    except bench.Unavailable as reason:
        pytest.skip(str(reason))
    benchmark.group = case.id
    benchmark.extra_info.update(case.info(), method=method,
                                groups=len(prepared.inputs.bounds) - 1,
                                kernel=bench.kernel_of(method, prepared.inputs))
    benchmark.extra_info["rel_err"] = bench.check_output(method, prepared, fn())
    if not benchmark.disabled:
        records = bench.run_case(prepared, (method, "premerged", "fused"))
        timed = next(r for r in records if r["method"] == method)
        if timed.get("error"):
            pytest.fail(timed["error"])
        benchmark.extra_info.update(timed)
    if case.device == "cuda":
        def run():
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
