"""The gradient of ``interp_linear`` with respect to its coefficients.

Per row or per group, whichever the PyTorch path's cost model (``torch_path``) says is
cheaper; on a GPU the same model decides (not measured there). Imports ``op_checks`` and
``torch_path``; ``dawin_fast.ops`` re-exports the public names.
"""

from __future__ import annotations

import torch

from .op_checks import _is_fake
from .torch_path import per_group_cheaper

# Coefficient gradient dc[g, i] = sum_{r in g} <dy_r, W_i x_r + b_i>, two ways:
# "rowwise": M matmuls over all rows (M*T*N*K); "pergroup": dW_g = dy_g^T x_g for every
# group (T*N*K, into one reused buffer), then <dW_g, W_i> (G*M*N*K). On a GPU the same
# cost model decides (not measured there).
GRAD_STRATEGIES = ("rowwise", "pergroup")


def coeff_grad_strategy(num_rows: int, num_groups: int, num_models: int) -> str:
    """``"pergroup"`` where the CPU cost model (``per_group_cheaper``) says it is cheaper:
    the same boundaries as ``cpu_strategy`` (measured crossovers: about 30, 20 and 12 rows
    per group at M = 2, 4, 9)."""
    return "pergroup" if per_group_cheaper(num_rows, num_groups, num_models) else "rowwise"


def coeff_grad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
    strategy: str | None = None,
) -> torch.Tensor:
    """dL/dcoeffs [G, M] (float32) of ``interp_linear`` given dL/dy ``grad_out`` [T, N]."""
    num_groups, num_models = coeffs.shape
    num_rows = x.shape[0]
    lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
    grad = torch.zeros((num_groups, num_models), dtype=torch.float32, device=x.device)
    if num_rows == 0:
        return grad
    dy = grad_out.float()
    x32 = x.float()
    row_group = torch.repeat_interleave(
        torch.arange(num_groups, device=x.device), lengths, output_size=num_rows
    )
    if bias is not None:  # sum_{r in g} <dy_r, b_i> = <sum_{r in g} dy_r, b_i>
        dy_sum = torch.zeros((num_groups, dy.shape[1]), dtype=torch.float32, device=x.device)
        dy_sum.index_add_(0, row_group, dy)
        grad += dy_sum @ bias.float().t()
    if strategy is None:
        # Tracing (fake tensors) cannot read the offsets the per-group path loops over.
        strategy = "rowwise" if _is_fake(x) else coeff_grad_strategy(num_rows, num_groups,
                                                                     num_models)
    if strategy not in GRAD_STRATEGIES:
        raise ValueError(f"strategy must be one of {GRAD_STRATEGIES}, got {strategy!r}")
    if strategy == "rowwise":
        per_row = torch.stack(
            [(dy * (x32 @ weight[i].float().t())).sum(-1) for i in range(num_models)], dim=1
        )
        return grad.index_add_(0, row_group, per_row)
    flat = weight.reshape(num_models, -1).float()  # [M, N*K]
    d_w = torch.empty(weight.shape[1:], dtype=torch.float32, device=x.device)  # reused
    bounds = offsets.tolist()
    for g in range(num_groups):
        start, end = bounds[g], bounds[g + 1]
        if end > start:
            torch.mm(dy[start:end].t(), x32[start:end], out=d_w)
            grad[g] += flat @ d_w.reshape(-1)
    return grad
