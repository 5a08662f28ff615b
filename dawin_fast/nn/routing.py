"""Routing: which interpolation coefficients each sample of a batch uses.

Layers replaced by dawin_fast (``DaWinLinear`` and friends) called without explicit
coefficients read the routing of the innermost active ``route(...)`` block. One routing
serves every layer of a forward pass: it is validated once, and each layer derives its
row offsets from it (a layer that sees L rows per sample scales the sample offsets by L).

Rows must be sample-major: the rows of sample b are contiguous (batch-first tensors
``[B, ...]``). The samples of group g are ``offsets[g] .. offsets[g+1]-1``, so the caller
sorts the batch by group once at the input (see ``dawin_fast.grouping``).

Example::

    with route(coeffs, offsets):   # coeffs [G, M], offsets [G+1] over samples
        y = model(x_sorted)
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import torch

from ..ops import check_values, skip_value_checks

_state = threading.local()


class Routing:
    """Coefficient rows ``coeffs`` [G, M] for groups of samples given by ``offsets`` [G+1].

    Without ``offsets``, ``coeffs`` is one row ([M] or [1, M]) for every row of every layer
    (static interpolation). Values are checked once here (offsets start at 0 and never
    decrease; coeffs finite), so layers skip the per-call checks that would synchronise
    with the GPU.
    """

    def __init__(self, coeffs: torch.Tensor, offsets: torch.Tensor | None = None) -> None:
        if not isinstance(coeffs, torch.Tensor) or not coeffs.is_floating_point():
            raise TypeError("route: coeffs must be a floating-point tensor")
        if coeffs.dim() == 1:
            coeffs = coeffs.unsqueeze(0)
        if coeffs.dim() != 2 or coeffs.shape[0] < 1:
            raise ValueError(f"route: coeffs must be [G, M] or [M], got {tuple(coeffs.shape)}")
        self.coeffs = coeffs.float()
        self.offsets = offsets
        if offsets is None:
            if coeffs.shape[0] != 1:
                raise ValueError("route: offsets are required when coeffs has more than one row")
            self.num_samples = None
            if not bool(torch.isfinite(self.coeffs).all()):
                raise ValueError("route: coeffs contain NaN or infinity")
        else:
            if not isinstance(offsets, torch.Tensor) or offsets.dim() != 1:
                raise ValueError("route: offsets must be a 1-D integer tensor [G+1]")
            if offsets.numel() != coeffs.shape[0] + 1:
                raise ValueError(
                    f"route: offsets must be [G+1] = [{coeffs.shape[0] + 1}], "
                    f"got {tuple(offsets.shape)}"
                )
            if offsets.device != coeffs.device:
                raise ValueError(f"route: offsets on {offsets.device}, coeffs on {coeffs.device}")
            self.num_samples = int(offsets[-1])
            check_values(self.num_samples, self.coeffs, offsets)
        self._row_offsets: dict[int, torch.Tensor] = {}  # by row count

    @property
    def num_models(self) -> int:
        return self.coeffs.shape[1]

    def row_offsets(self, x: torch.Tensor) -> torch.Tensor:
        """Offsets over the rows of ``x`` [..., K] (sample-major, batch-first)."""
        num_rows = math.prod(x.shape[:-1])
        if self.offsets is not None and x.dim() >= 3 and x.shape[0] != self.num_samples:
            raise ValueError(
                f"routing is for {self.num_samples} samples, but a layer's input has shape "
                f"{tuple(x.shape)}: inputs must be batch-first [B, ...]"
            )
        if num_rows in self._row_offsets:
            return self._row_offsets[num_rows]
        if self.offsets is None:
            offsets = torch.tensor([0, num_rows], device=self.coeffs.device)
        else:
            offsets = self._sample_offsets_to_rows(num_rows)
        self._row_offsets[num_rows] = offsets
        return offsets

    def _sample_offsets_to_rows(self, num_rows: int) -> torch.Tensor:
        num_samples = self.num_samples
        if num_samples == 0:
            if num_rows:
                raise ValueError(f"routing is for 0 samples, but a layer sees {num_rows} rows")
            return self.offsets
        if num_rows % num_samples:
            raise ValueError(
                f"routing is for {num_samples} samples, but a layer sees {num_rows} rows "
                f"(not a multiple)"
            )
        return self.offsets * (num_rows // num_samples)


def current_routing() -> Routing | None:
    """The routing of the innermost active ``route`` block, or None."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def route(coeffs: torch.Tensor | Routing, offsets: torch.Tensor | None = None) -> Iterator[Routing]:
    """Make layers without explicit coefficients use ``coeffs`` (and ``offsets``) here.

    ``coeffs`` is [G, M] with ``offsets`` [G+1] over samples, or a single row [M] / [1, M]
    without offsets for the whole batch (static interpolation), or a ``Routing``.
    """
    routing = coeffs if isinstance(coeffs, Routing) else Routing(coeffs, offsets)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(routing)
    try:
        with skip_value_checks():
            yield routing
    finally:
        stack.pop()
