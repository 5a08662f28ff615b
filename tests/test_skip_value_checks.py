"""Bad offsets under ``skip_value_checks`` on the PyTorch path: it reads the offsets to the
host anyway (to loop over the groups), so it names the broken rule instead of failing
deep inside torch (``allocated size does not match required size``)."""

from __future__ import annotations

import pytest
import torch

from dawin_fast import interp_linear
from dawin_fast.ops import interp_linear_torch, skip_value_checks, use_backend

BAD_OFFSETS = [
    ([0, 2, 7], "offsets must end at the row count 6, got 7"),
    ([0, 2, 5], "offsets must end at the row count 6, got 5"),
    ([0, 4, 2], "offsets must be non-decreasing"),
    ([1, 3, 6], "offsets must start at 0, got 1"),
]


@pytest.mark.parametrize("strategy", ["loop", "rowscaled", None])
@pytest.mark.parametrize(("offsets", "message"), BAD_OFFSETS)
def test_bad_offsets_are_named_with_value_checks_skipped(offsets, message, strategy):
    x, weight = torch.randn(6, 4), torch.randn(2, 3, 4)
    coeffs = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    with skip_value_checks(), use_backend("torch"), pytest.raises(ValueError, match=message):
        if strategy is None:
            interp_linear(x, weight, coeffs, torch.tensor(offsets))
        else:
            interp_linear_torch(x, weight, coeffs, torch.tensor(offsets), strategy=strategy)
