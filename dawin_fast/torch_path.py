"""The PyTorch path of ``interp_linear`` (CPU tensors) and its cost model.

Per call, a per-group loop (merge each group's weight, one matmul over its rows) or the
row-scaled form (M matmuls over all rows, no merge), by a cost model fitted on the
developer CPU; where its two costs are close, measured on this machine at the first call
of a key (``dawin_fast.measured``). Imports ``measured`` and ``op_checks``;
``dawin_fast.ops`` re-exports the public names.
"""

from __future__ import annotations

import torch

from . import measured
from .op_checks import _is_fake, check_bounds

# CPU cost model of the PyTorch path, in units of one row through one model's weight in a
# large matmul (N*K multiply-adds). Per-row strategies ("rowscaled" forward, "rowwise"
# coefficient gradient) cost M units per row. Per-group strategies ("loop" forward,
# "pergroup" gradient) cost, per non-empty group, GROUP_COST_PER_MODEL * M +
# GROUP_COST (streaming N*K weights: a merge, or dW_g and its contraction with the M
# weights), plus GROUP_ROW_COST per row (a matmul on a group's few rows runs below peak).
# Fitted on the developer CPU (one thread, fp32, K=768, N=3072, M in {2, 4, 9}, 1 to 100
# rows per group; see docs/kernels.md, "CPU dispatch"): forward 11.2*M + 9 and 1.2 per row, gradient
# 9.3*M + 8 and 1.2 per row.
GROUP_COST_PER_MODEL = 10.0
GROUP_COST = 9.0
GROUP_ROW_COST = 1.2
PATH_STRATEGIES = ("loop", "rowscaled")


#: The PyTorch path measures loop against row-scaled where the cost model above puts them
#: within this factor of each other (elsewhere the model's pick stands): at M = 2 from 17 to
#: 217 rows per group, i.e. around the fitted crossover (36), where one machine's constants
#: may be wrong on another.
CPU_MEASURE_FACTOR = 1.5


def _cpu_costs(num_rows: int, num_groups: int, num_models: int) -> tuple[float, float]:
    """(per-group, per-row) cost of a call by the CPU cost model above."""
    per_group = (num_groups * (GROUP_COST_PER_MODEL * num_models + GROUP_COST)
                 + GROUP_ROW_COST * num_rows)
    return per_group, float(num_models * num_rows)


def per_group_cheaper(num_rows: int, num_groups: int, num_models: int) -> bool:
    """Whether a per-group strategy beats a per-row one by the CPU cost model above."""
    per_group, per_row = _cpu_costs(num_rows, num_groups, num_models)
    return per_group <= per_row


def _cpu_key(x: torch.Tensor, weight: torch.Tensor, num_groups: int) -> str:
    num_models, n_dim, k_dim = weight.shape
    return (f"torch {str(x.dtype).removeprefix('torch.')} M={num_models} N={n_dim} K={k_dim} "
            f"rows~{measured.bucket(x.shape[0])} groups~{measured.bucket(num_groups)} "
            f"{'contiguous' if weight.is_contiguous() else 'strided'}")


def _measured_cpu_strategy(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
                           offsets: torch.Tensor, bias: torch.Tensor | None,
                           num_groups: int) -> str:
    """``cpu_strategy``'s pick, or, where its two costs lie within ``CPU_MEASURE_FACTOR``,
    the faster of loop and row-scaled as measured on this machine at the first call of
    the key (``dawin_fast.measured``: cached in memory and on disk per CPU and versions)."""
    num_rows, num_models = x.shape[0], weight.shape[0]
    prior = cpu_strategy(num_rows, num_groups, num_models)
    if not measured.enabled() or num_groups == 0 or _is_fake(x):
        return prior
    per_group, per_row = _cpu_costs(num_rows, num_groups, num_models)
    if max(per_group, per_row) > CPU_MEASURE_FACTOR * min(per_group, per_row):
        return prior
    scratch: list[torch.Tensor] = []  # allocated only when measuring

    def runner(strategy: str):
        def run():
            if not scratch:
                scratch.append(torch.empty((num_rows, weight.shape[1]), dtype=x.dtype,
                                           device=x.device))
            interp_linear_torch(x, weight, coeffs, offsets, bias, out=scratch[0],
                                strategy=strategy)
        return run

    runs = {s: runner(s) for s in PATH_STRATEGIES}
    choice, _ = measured.choose(measured.cpu_name(), _cpu_key(x, weight, num_groups), runs,
                                prior, torch_device=x.device)
    return choice


def cpu_strategy(num_rows: int, num_groups: int, num_models: int) -> str:
    """The PyTorch path's strategy for ``num_groups`` non-empty groups over ``num_rows``.

    ``"loop"``: per group, merge the weight, then one matmul over its rows.
    ``"rowscaled"``: y = sum_i diag(c_i) x W_i^T, M matmuls over all rows and no merge. Both
    costs scale with N*K, so the choice depends on the rows per group and M only: the loop
    from 36 rows per group at M=2, 18 at M=4, 13 at M=9.
    """
    if num_groups == 0 or per_group_cheaper(num_rows, num_groups, num_models):
        return "loop"
    return "rowscaled"


def interp_linear_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    strategy: str | None = None,
) -> torch.Tensor:
    """Pure-PyTorch implementation of the contract for 2-D ``x`` (the CPU path).

    Two strategies (``cpu_strategy`` picks by rows per group and M; ``strategy`` forces
    one): ``"loop"`` merges one weight per non-empty group and runs one matmul over its
    rows; ``"rowscaled"`` computes y = sum_i diag(c_i) x W_i^T, M matmuls over all rows and
    no merged weight, which wins when groups are a few rows each. Both in float32.
    ``out``: optional [T, N] tensor to write.
    """
    num_rows = x.shape[0]
    num_models, out_features, _ = weight.shape
    if out is None:
        out = torch.empty((num_rows, out_features), dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    coeffs = coeffs.float()
    x32 = x.float()
    bounds = offsets.tolist()
    # Read anyway to loop over the groups: checked here even under skip_value_checks.
    check_bounds(bounds, num_rows)
    groups = [g for g in range(coeffs.shape[0]) if bounds[g + 1] > bounds[g]]
    if strategy is None:
        strategy = _measured_cpu_strategy(x, weight, coeffs, offsets, bias, len(groups))
    if strategy not in PATH_STRATEGIES:
        raise ValueError(f"strategy must be one of {PATH_STRATEGIES}, got {strategy!r}")
    if strategy == "rowscaled":
        lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
        row_coeffs = torch.repeat_interleave(coeffs, lengths, dim=0, output_size=num_rows)
        acc = torch.zeros((num_rows, out_features), dtype=torch.float32, device=x.device)
        for i in range(num_models):
            acc.addmm_(x32 * row_coeffs[:, i : i + 1], weight[i].float().t())
        if bias is not None:
            acc += row_coeffs @ bias.float()
        return out.copy_(acc)
    merge = _Merger(weight)
    for g in groups:
        start, end = bounds[g], bounds[g + 1]
        merged_bias = coeffs[g] @ bias.float() if bias is not None else None
        out[start:end] = torch.nn.functional.linear(x32[start:end], merge(coeffs[g]),
                                                    merged_bias)
    return out


class _Merger:
    """``row -> sum_i row[i] weight[i]`` [N, K] in float32: one GEMV over the flattened
    weights into one reused buffer. Both choices measured on the developer CPU (one
    thread, 3072x768): ``einsum("m,mnk->nk")`` took 6.3 ms at M=2 against 1.7 ms for the
    GEMV, and a fresh 9 MB result per group cost up to 4 ms more in page faults (5.25 vs
    1.15 ms at M=2). The backward's transposed weights (a view) merge untransposed."""

    def __init__(self, weight: torch.Tensor) -> None:
        num_models, rows, cols = weight.shape
        self.transposed = weight.transpose(1, 2).is_contiguous() and not weight.is_contiguous()
        source = weight.transpose(1, 2) if self.transposed else weight
        self.flat = source.reshape(num_models, -1).float()
        self.shape = source.shape[1:]
        self.buffer = torch.empty((1, self.flat.shape[1]), dtype=torch.float32,
                                  device=weight.device)

    def __call__(self, row: torch.Tensor) -> torch.Tensor:
        merged = torch.mm(row[None], self.flat, out=self.buffer).view(self.shape)
        return merged.t() if self.transposed else merged
