"""Fused interpolation linear vs its baselines, all timed in the same run.

    python -m pytest benchmarks --benchmark-enable --benchmark-json benchmarks/results.json
    python -m benchmarks.render benchmarks/results.json > benchmarks/RESULTS.md

On a GPU, each timing is ``triton.testing.do_bench``'s median (CUDA events, L2 flushed
between runs), stored as ``extra_info["median_ms"]``; pytest-benchmark also times a
synchronised call. Before timing, every method's output is checked against the fused
op's, so a baseline that computes something else cannot win.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import cases

CASES = cases.default_cases()


def _time_gpu_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


@pytest.mark.parametrize("method", cases.METHODS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interp_linear(benchmark, case, method):
    inputs = cases.make_inputs(case)
    try:
        fn = cases.build(method, case, inputs)
    except cases.Unavailable as reason:
        pytest.skip(str(reason))

    expected = cases.build("fused", case, inputs)()
    got = fn()
    if method == "premerged_cublas":  # one weight for all rows: compare group 0 only
        rows = slice(inputs.bounds[0], inputs.bounds[1])
        expected, got = expected[rows], got[rows]
    scale = expected.float().abs().mean().item() + 1e-6
    err = (got.float() - expected.float()).abs().max().item()
    # The baselines merge in the input dtype (the usual eager code), so allow its roundoff.
    assert err <= 0.05 * scale + 1e-3, f"{method} disagrees with fused: {err:.3g}"

    benchmark.group = case.id
    benchmark.extra_info.update(case=case.id, method=method, rows=case.rows,
                                groups=len(inputs.bounds) - 1, device=str(inputs.x.device))
    if inputs.x.is_cuda:
        benchmark.extra_info["median_ms"] = _time_gpu_ms(fn)

        def run():
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
