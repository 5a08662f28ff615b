"""Float64 reference of the ``interp_linear`` contract, and the tolerances it is held to.

Used by the tests and the self-check: a plain loop over groups in float64 on the CPU,
independent of both implementations.
"""

from __future__ import annotations

import torch

# Relative to the error scale sum_i |c_i| (|x| @ |W_i|^T + |b_i|): inputs are exact in their
# dtype; the combined weight (or scaled x) and the output are each rounded once, so a few
# units of roundoff of the dtype bound the error. fp32 runs the dot in full precision.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.4e-2}


def interp_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor | list[int],
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, error scale), both float64 [T, N] on the CPU, for 2-D x."""
    x = x.detach().double().cpu()
    weight = weight.detach().double().cpu()
    coeffs = coeffs.detach().double().cpu()
    bias = None if bias is None else bias.detach().double().cpu()
    bounds = [int(v) for v in offsets]
    y = torch.zeros(x.shape[0], weight.shape[1], dtype=torch.float64)
    scale = torch.zeros_like(y)
    for g in range(coeffs.shape[0]):
        rows = slice(bounds[g], bounds[g + 1])
        y[rows] = x[rows] @ torch.einsum("m,mnk->kn", coeffs[g], weight)
        scale[rows] = x[rows].abs() @ torch.einsum("m,mnk->kn", coeffs[g].abs(), weight.abs())
        if bias is not None:
            y[rows] += coeffs[g] @ bias
            scale[rows] += coeffs[g].abs() @ bias.abs()
    return y, scale


def error_ratio(y: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor) -> float:
    """Worst |y - expected| / tolerance over all elements (<= 1 passes; NaN fails)."""
    if expected.numel() == 0:
        return 0.0
    got = y.detach().double().cpu().reshape(expected.shape)
    if not torch.isfinite(got).all():
        return float("inf")
    bound = TOLERANCE[y.dtype] * scale + 1e-6
    return ((got - expected).abs() / bound).max().item()
