"""Assertions against the float64 reference shared by the tests."""

from __future__ import annotations

import torch

from dawin_fast.reference import error_ratio, interp_linear_reference


def assert_close_to_reference(y, x, weight, coeffs, offsets, bias=None):
    expected, scale = interp_linear_reference(x, weight, coeffs, offsets.cpu(), bias)
    assert y.shape[-1] == weight.shape[1]
    got = y.detach().double().cpu().reshape(expected.shape)
    assert torch.isfinite(got).all(), "output has non-finite values (unwritten elements?)"
    ratio = error_ratio(y, expected, scale)
    assert ratio <= 1.0, f"error exceeds tolerance: worst error/tolerance = {ratio:.3g}"


def offsets_from_lengths(lengths, dtype=torch.int64, device="cpu"):
    out = [0]
    for n in lengths:
        out.append(out[-1] + int(n))
    return torch.tensor(out, dtype=dtype, device=device)
