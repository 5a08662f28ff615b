"""Fused interpolation linear vs its baselines, all timed in the same run.

    python -m pytest benchmarks/test_bench_interp_linear.py --benchmark-enable \\
        --benchmark-json benchmarks/results.json
    python -m benchmarks.render benchmarks/results.json --command "<that command>" \\
        --output benchmarks/RESULTS.md

On a GPU each timing is the median of at least 20 CUDA-event-timed calls after a warm-up,
L2 flushed before each (``dawin_fast.bench.layers.time_cuda``), stored with the case's
parameters in ``extra_info``; pytest-benchmark also times a synchronised call. Before
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
        benchmark.extra_info.update(bench.measure(fn, case.device))
    if case.device == "cuda":
        def run():
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
