"""``DaWinLinear``: a drop-in ``nn.Linear`` over M stacked models, interpolated per group."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..ops import interp_linear
from .routing import require_routing


class DaWinLinear(nn.Module):
    """M same-shape linear layers evaluated on their interpolation, fused.

    ``forward(x, coeffs, offsets)`` computes, for the rows of group g,
    ``x @ (sum_i coeffs[g, i] W_i)^T + sum_i coeffs[g, i] b_i`` through
    ``dawin_fast.interp_linear``: no interpolated weight is ever materialised.

    Without ``coeffs`` the layer uses the routing of the enclosing
    ``dawin_fast.route(...)`` block (set once per forward by a DaWin model); with no
    routing set it raises.

    The stacked parameters ``weight`` [M, N, K] and ``bias`` [M, N] are frozen
    (``requires_grad=False``): this is an inference library. Gradients still flow to the
    input and to the coefficients.

    ``routing_name``: the layer's name for per-layer coefficients (``route(...,
    layers={name: ...})``), set by ``dawinize``/``DaWinViT``/``name_layers``.
    """

    routing_name: str | None = None

    def __init__(self, in_features: int, out_features: int, num_models: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if num_models < 1:
            raise ValueError(f"DaWinLinear: num_models must be >= 1, got {num_models}")
        self.in_features = in_features
        self.out_features = out_features
        self.num_models = num_models
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(
            torch.empty((num_models, out_features, in_features), **factory), requires_grad=False
        )
        if bias:
            self.bias = nn.Parameter(torch.empty((num_models, out_features), **factory),
                                     requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linears(cls, linears: Sequence[nn.Linear]) -> DaWinLinear:
        """Stack M ``nn.Linear`` layers of one shape, dtype, device and bias presence."""
        linears = list(linears)
        if not linears:
            raise ValueError("DaWinLinear.from_linears: need at least one nn.Linear")
        for i, lin in enumerate(linears):
            if not isinstance(lin, nn.Linear):
                raise TypeError(
                    f"DaWinLinear.from_linears: item {i} is {type(lin).__name__}, not nn.Linear"
                )
        first = linears[0]
        for i, lin in enumerate(linears[1:], start=1):
            for what, a, b in (
                ("weight shape", tuple(first.weight.shape), tuple(lin.weight.shape)),
                ("dtype", first.weight.dtype, lin.weight.dtype),
                ("device", first.weight.device, lin.weight.device),
                ("bias presence", first.bias is not None, lin.bias is not None),
            ):
                if a != b:
                    raise ValueError(
                        f"DaWinLinear.from_linears: linear {i} differs from linear 0 in "
                        f"{what}: {b} vs {a}"
                    )
        layer = cls(first.in_features, first.out_features, len(linears),
                    bias=first.bias is not None,
                    device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(torch.stack([lin.weight for lin in linears]))
            if layer.bias is not None:
                layer.bias.copy_(torch.stack([lin.bias for lin in linears]))
        return layer

    def forward(self, x: torch.Tensor, coeffs: torch.Tensor | None = None,
                offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the interpolated layer.

        Args:
            x: [..., in_features].
            coeffs: [G, M] (or [M] for one group), or None to use the active routing.
            offsets: [G+1] row offsets over the flattened rows of x; may be omitted when
                coeffs has one row (every row in one group).
        """
        one_hot = None
        if coeffs is None:
            if offsets is not None:
                raise ValueError("DaWinLinear: offsets given without coeffs")
            routing = require_routing("DaWinLinear (without coeffs=[G, M] and offsets)")
            routing = routing.resolve(self.routing_name, x)
            coeffs, offsets = routing.coeffs, routing.row_offsets(x, self.routing_name)
            one_hot = routing.one_hot_for(math.prod(x.shape[:-1]))
        else:
            if coeffs.dim() == 1:
                coeffs = coeffs.unsqueeze(0)
            if offsets is None:
                if coeffs.dim() != 2 or coeffs.shape[0] != 1:
                    raise ValueError(
                        "DaWinLinear: offsets are required when coeffs has more than one row"
                    )
                offsets = torch.tensor([0, math.prod(x.shape[:-1])], device=x.device)
        return interp_linear(x, self.weight, coeffs, offsets, self.bias, one_hot=one_hot)

    def merged(self, coeff_row: torch.Tensor | Sequence[float]) -> nn.Linear:
        """A plain ``nn.Linear`` holding the interpolation with one coefficient row [M]."""
        row = torch.as_tensor(coeff_row, dtype=torch.float32, device=self.weight.device)
        if row.shape != (self.num_models,):
            raise ValueError(f"DaWinLinear.merged: coeff_row must be [{self.num_models}]")
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.einsum("m,mnk->nk", row, self.weight.float()))
            if self.bias is not None:
                lin.bias.copy_(row @ self.bias.float())
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_models={self.num_models}, bias={self.bias is not None}")
