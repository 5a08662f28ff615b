"""Fused interpolation linear vs its baselines, all timed in the same run.

    python -m pytest benchmarks --benchmark-enable --benchmark-json benchmarks/results.json
    python -m benchmarks.render benchmarks/results.json "<that command>" > benchmarks/RESULTS.md

On a GPU each timing is ``triton.testing.do_bench``'s median (CUDA events, L2 flushed
between runs), stored as ``extra_info["median_ms"]``; pytest-benchmark also times a
synchronised call. Before timing, every method's output is checked against the fused
op's, so a baseline that computes something else cannot win. With benchmarks disabled
(the default in pytest.ini) each case runs once: the harness is tested.
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
    inputs = bench.make_inputs(case)
    try:
        fn = bench.build(method, case, inputs)
    except bench.Unavailable as reason:
        pytest.skip(str(reason))
    bench.check_against_fused(method, inputs, fn(), bench.build("fused", case, inputs)())

    benchmark.group = case.id
    benchmark.extra_info.update(case=case.id, method=method, rows=case.rows,
                                groups=len(inputs.bounds) - 1, device=case.device)
    if case.device == "cuda":
        if not benchmark.disabled:
            benchmark.extra_info["median_ms"] = bench.time_ms(fn, "cuda")

        def run():
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
