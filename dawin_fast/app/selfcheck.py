"""The self-check: ``dawin-fast selfcheck [--device cuda] [--json FILE]``.

On a GPU, every kernel strategy and config that can serve a call there
(``verify.kernel_configs``) runs at the ViT-B/32 MLP shapes (fc1 768->3072, fc2
3072->768; one group and per-sample groups of 50 rows; bf16 and fp16; M = 2 and 8),
forced, on poisoned outputs, twice, against the merged-weight fp32 reference with the
element-wise bound (``verify.check``): one table row per run (strategy, config, shape, worst
error / bound, repeatable, time). Then the quick check below through the dispatch. Its
verdicts are recorded in the verifier's cache for this device.

The quick check (the only one on a CPU; also ``python -m dawin_fast.app.selfcheck``):
``interp_linear`` on one group, three clusters and per-sample groups against a float64
reference, the worst error relative to the error scale sum_i |c_i| |x| |W_i|.

Exits non-zero if any check fails. ``run_strategies`` is the GPU part, callable from
Python (a first GPU session runs it; the tests run it on toy shapes through the
interpreter).
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable, Sequence

import torch

from .. import verify
from ..ops import interp_linear
from ..reference import error_ratio, interp_linear_reference
from .outputs import write_text

TABLE_HEADER = (f"{'strategy':<10}{'config':<11}{'shape':<44}{'error/bound':>12}  "
                f"{'repeatable':<11}{'time s':>8}  result")


def check(lengths: list[int], num_models: int, dtype: torch.dtype, device: str,
          seed: int = 0) -> float:
    """Worst error / tolerance for one grouped call (<= 1 passes)."""
    gen = torch.Generator().manual_seed(seed)
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    x = torch.randn(bounds[-1], 96, generator=gen)
    weight = torch.randn(num_models, 80, 96, generator=gen) / 96**0.5
    bias = torch.randn(num_models, 80, generator=gen)
    coeffs = torch.randn(len(lengths), num_models, generator=gen)
    x, weight, bias = (t.to(device, dtype) for t in (x, weight, bias))
    y = interp_linear(x, weight, coeffs.to(device), torch.tensor(bounds, device=device), bias)
    return error_ratio(y, *interp_linear_reference(x, weight, coeffs, bounds, bias))


def quick_rows(device: str) -> list[dict]:
    """The quick check's rows (groups, M, dtype, error / tolerance, passed)."""
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    patterns = {"one group": [300], "3 clusters": [120, 0, 90, 90], "per-sample": [7] * 40}
    rows = []
    for name, lengths in patterns.items():
        for num_models in (2, 8):
            for dtype in dtypes:
                ratio = check(lengths, num_models, dtype, device)
                rows.append(dict(groups=name, num_models=num_models,
                                 dtype=str(dtype).removeprefix("torch."),
                                 error_over_tolerance=ratio, passed=ratio <= 1.0))
    return rows


def _print_quick(device: str, rows: list[dict], out: Callable[[str], None]) -> None:
    out(f"interp_linear self-check on {device} "
        f"({'Triton kernels' if device.startswith('cuda') else 'PyTorch path'})")
    out(f"{'groups':<12}{'M':>3}  {'dtype':<10}{'error/tolerance':>16}  result")
    for r in rows:
        out(f"{r['groups']:<12}{r['num_models']:>3}  {r['dtype']:<10}"
            f"{r['error_over_tolerance']:>16.3f}  {'ok' if r['passed'] else 'FAIL'}")


def format_row(row: dict) -> str:
    """One line of the strategy table."""
    worst = row["worst_err_over_bound"]
    worst = "-" if worst is None else f"{worst:.3g}"
    repeatable = {True: "yes", False: "NO", None: "-"}[row["repeatable"]]
    result = "ok" if row["passed"] else f"FAIL {row['reason']}: {row['detail']}"
    return (f"{row['strategy']:<10}{row['config']:<11}{row['case']:<44}{worst:>12}  "
            f"{repeatable:<11}{row['seconds']:>8.2f}  {result}")


def run_strategies(device: torch.device | str = "cuda",
                   cases: Sequence[verify.SelfCheckCase] | None = None,
                   out: Callable[[str], None] = print) -> list[dict]:
    """Every strategy and config on every case (default: ``verify.selfcheck_cases()``,
    the production shapes), printed row by row through ``out``; the rows."""
    device = torch.device(device)
    out(f"kernel self-check on {device}: each strategy and config against the merged-weight "
        f"fp32 reference (worst |error| / element-wise bound, <= 1 passes) and bitwise "
        f"repeatable over 2 launches")
    out(TABLE_HEADER)
    return verify.run_selfcheck(device, cases, progress=lambda row: out(format_row(row)))


def report(device: str, strategies: list[dict], quick: list[dict]) -> dict:
    """The JSON of a run (for bug reports): environment, both tables."""
    return dict(device=device,
                device_name=(verify.cuda_device_name(torch.device(device))
                             if device.startswith("cuda") else verify.cpu_name()),
                versions=verify.versions(), python=platform.python_version(),
                failed=sum(not r["passed"] for r in strategies + quick),
                strategies=strategies, quick=quick)


def run(device: str, json_path: str | None = None,
        cases: Sequence[verify.SelfCheckCase] | None = None,
        out: Callable[[str], None] = print) -> int:
    """The command: the strategy table on CUDA, then the quick check; the JSON report to
    ``json_path``. 0 when everything passed, 1 otherwise. ``cases`` (toy shapes) run the
    strategy table on a CPU too, through the Triton interpreter."""
    on_gpu = device.startswith("cuda") or cases is not None
    strategies = run_strategies(device, cases, out) if on_gpu else []
    quick = quick_rows(device)
    _print_quick(device, quick, out)
    failed = sum(not r["passed"] for r in strategies + quick)
    out("all checks passed" if not failed else f"{failed} checks FAILED"
        + (f"; please send {json_path} with your bug report" if json_path else
           "; rerun with --json FILE and send FILE with your bug report"))
    if json_path:
        replaced = write_text(json_path, json.dumps(report(device, strategies, quick),
                                                    indent=1) + "\n")
        out(f"{'replaced' if replaced else 'wrote'} {json_path}")
    return 1 if failed else 0


def main() -> int:
    return run("cuda" if torch.cuda.is_available() else "cpu")


if __name__ == "__main__":
    sys.exit(main())
