"""End-to-end DaWin (P5/P6): dawin_fast vs one plain forward and the authors' rebuild loops.

    python -m pytest benchmarks/test_bench_dawin.py --benchmark-enable \\
        --benchmark-json benchmarks/e2e.json
    dawin-fast bench --e2e        # the same, printed as a table

With ``--benchmark-enable`` each method is timed in alternating rounds with a plain forward
(``dawin_fast.bench.e2e.measure_side_by_side``): the median ratio over rounds and its spread
(``vs_plain_forward``) and a ``noise`` note when the numbers are noisy go into
``extra_info``.

Before timing, the fused results are checked against the rebuild loops (the exact
per-sample and per-cluster references), so the comparison is between equal computations.
"""

from __future__ import annotations

import pytest
import torch

from dawin_fast.bench import e2e as bench_e2e


@pytest.fixture(scope="module")
def setup():
    return bench_e2e.make_setup(bench_e2e.default_case())


@torch.no_grad()
def test_fused_dawin_matches_the_rebuild_loops(setup):
    case = setup.case
    tol = dict(rtol=1e-3, atol=1e-3) if case.dtype == torch.float32 else dict(rtol=0.1, atol=0.5)
    fused, _ = bench_e2e.build("dawin_per_sample", setup)
    rebuilt, count = bench_e2e.build("rebuild_per_sample", setup)
    torch.testing.assert_close(fused()[:count].float(), rebuilt().float(), **tol)
    fused, _ = bench_e2e.build("dawin_mixture", setup)
    rebuilt, _ = bench_e2e.build("rebuild_per_cluster", setup)
    torch.testing.assert_close(fused().float(), rebuilt().float(), **tol)


@pytest.mark.parametrize("method", bench_e2e.METHODS)
def test_e2e(benchmark, setup, method):
    fn, count = bench_e2e.build(method, setup)
    benchmark.group = setup.case.id
    benchmark.extra_info.update(case=setup.case.id, method=method, images=count)
    if not benchmark.disabled:  # the ratio to a plain forward timed beside it, in rounds
        benchmark.extra_info.update(bench_e2e.measure_side_by_side(setup, method))

    def run():
        with torch.no_grad():
            fn()
        if setup.case.device == "cuda":
            torch.cuda.synchronize()

    gpu = setup.case.device == "cuda"
    benchmark.pedantic(run, rounds=3 if gpu and not method.startswith("rebuild") else 1,
                       warmup_rounds=1 if gpu else 0)
