"""References of the ``interp_linear`` contract, and the bounds they are held to.

Two of them, both independent of the fused kernels:

* ``interp_linear_reference``: a plain loop over groups in float64 on the CPU, with a
  norm-wise tolerance (``error_ratio``): the tests and the quick self-check;
* ``merged_reference``: fp32 ``F.linear`` on each group's merged weight on the call's own
  device (cuBLAS on a GPU, TF32 off), with the element-wise bound ``error_bound``, which
  one corrupted k16 slice exceeds: the verifier (``dawin_fast.verify``), the strategy
  self-check and the production-shape numerics (``dawin_fast.bench.numerics``).

The element-wise bound (per output element y[r, n] = sum_k x[r, k] w[n, k] + b[n]): the
kernels accumulate in fp32 and round at most one operand of each product to the 16-bit type
(the combined weight in combine / swap-AB, the coefficient-scaled x in row-scaled, neither
in the epilogue kernel), then round the output. With u the 16-bit unit roundoff (bf16 2^-8,
fp16 2^-11) and s[r, n] = sqrt(sum_k (x[r, k] w[n, k])^2):

* output rounding: <= u |y| (taken as u |ref|, a 1 + u factor absorbed);
* operand rounding: each term errs by at most u |x_k w_k|, independently, so the sum's
  standard deviation is at most u s / sqrt(3) = 0.58 u s; over ~4e7 elements the largest is
  about 5.5 standard deviations (3.2 u s); the bound allows 6 u s;
* fp32 accumulation: ~K 2^-24 s, negligible.

So |y - ref| <= u |ref| + 6 u s. A corrupted k16 slice (zeroed, or taken from another
k-step or another group) adds to each element of its tile an error whose RMS is at least
the slice's own share of s: 4 s / sqrt(K) = 0.072 s at K = 3072 (0.144 s at 768), against
the bound's s-term 6 u s = 0.023 s (bf16) and 0.0029 s (fp16). fp32 inputs with TF32 round
both operands to TF32 (u = 2^-11 each): their s-term takes 2 u.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}
TF32_UNIT_ROUNDOFF = 2.0 ** -11
SIGMAS = 6.0  # the operand-rounding term of the bound, in units of u * s


def merged_reference(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
                     offsets: torch.Tensor | list[int], bias: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ref, s), fp32 [T, N] on x's device: ``F.linear`` on each group's merged weight
    (merged in fp32 from the inputs, TF32 off), and s[r, n] = sqrt(sum_k (x[r, k] w[n, k])^2).
    Empty groups are skipped; their rows stay 0 (there are none)."""
    x, w = x.detach().float(), weight.detach().float()
    b = None if bias is None else bias.detach().float()
    c = coeffs.detach().float().to(x.device)
    bounds = offsets.tolist() if isinstance(offsets, torch.Tensor) else list(offsets)
    ref = torch.zeros(x.shape[0], w.shape[1], device=x.device)
    scale = torch.zeros_like(ref)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for g in range(c.shape[0]):
            if bounds[g] == bounds[g + 1]:
                continue
            rows = slice(bounds[g], bounds[g + 1])
            merged = torch.einsum("m,mnk->nk", c[g], w)
            ref[rows] = F.linear(x[rows], merged, None if b is None else c[g] @ b)
            scale[rows] = F.linear(x[rows].square(), merged.square()).sqrt()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return ref, scale


def error_bound(ref: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                tf32: bool = False) -> torch.Tensor:
    """Element-wise bound on |y - ref| (module docstring): u |ref| + 6 u s; fp32 with
    ``tf32``: 2^-24 |ref| + 6 (2 * 2^-11) s."""
    u = UNIT_ROUNDOFF[dtype]
    u_operand = 2 * TF32_UNIT_ROUNDOFF if dtype == torch.float32 and tf32 else u
    return u * ref.abs() + SIGMAS * u_operand * scale + 1e-30


def compare(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> dict:
    """How ``out`` stands against the bound: the worst |err| / bound (pass iff <= 1 and
    every element finite), how many elements exceed it, where the worst one is, and the
    norm-wise relative error (for comparison with the benchmarks' check)."""
    err = (out.float() - ref).abs()
    finite = torch.isfinite(out)
    ratio = torch.where(finite, err / bound, torch.full_like(err, math.inf))
    worst = int(ratio.argmax()) if ratio.numel() else 0
    worst_ratio = float(ratio.flatten()[worst]) if ratio.numel() else 0.0
    over = int((ratio > 1).sum())
    rel = float(torch.where(finite, err, 0).norm() / ref.norm().clamp_min(1e-30))
    n_dim = out.shape[1] if out.dim() == 2 and out.shape[1] else 1
    return dict(max_err_over_bound=worst_ratio, elements_over_bound=over,
                nonfinite=int((~finite).sum()), worst_row=worst // n_dim,
                worst_col=worst % n_dim, rel_err=rel,
                passed=bool(over == 0 and bool(finite.all())))
