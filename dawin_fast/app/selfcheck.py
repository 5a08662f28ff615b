"""Quick self-check: ``interp_linear`` against a float64 reference on this machine.

    python -m dawin_fast.app.selfcheck

Runs one group, three clusters and per-sample groups on the best available device (CUDA:
the Triton kernels in fp32/fp16/bf16; CPU: the PyTorch path) and prints the worst error
relative to the error scale sum_i |c_i| |x| |W_i|. Exits non-zero if any check fails.
"""

from __future__ import annotations

import sys

import torch

from ..ops import interp_linear
from ..reference import error_ratio, interp_linear_reference


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


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    patterns = {"one group": [300], "3 clusters": [120, 0, 90, 90], "per-sample": [7] * 40}
    print(f"interp_linear self-check on {device} "
          f"({'Triton kernels' if device == 'cuda' else 'PyTorch path'})")
    print(f"{'groups':<12}{'M':>3}  {'dtype':<10}{'error/tolerance':>16}  result")
    failed = 0
    for name, lengths in patterns.items():
        for num_models in (2, 8):
            for dtype in dtypes:
                ratio = check(lengths, num_models, dtype, device)
                ok = ratio <= 1.0
                failed += not ok
                print(f"{name:<12}{num_models:>3}  {str(dtype)[6:]:<10}{ratio:>16.3f}  "
                      f"{'ok' if ok else 'FAIL'}")
    print("all checks passed" if not failed else f"{failed} checks FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
