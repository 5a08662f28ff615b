"""What the compile gate builds, declared by the kernel modules themselves.

Each module of ``kernels/`` that has a launcher defines ``compile_variants()``, a
generator of ``Variant``: the real calls (its launcher's own plans on CPU stand-in tensors)
that the compile gate, a developer tool (``dawin_fast.kernel_tools.compile_gate``), builds
for every target and checks. This module holds only those declarations' vocabulary: the
checks' names (``CHECKS``), ``Variant``, and the stand-in calls. It does no I/O and
imports nothing outside ``kernels/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from . import arch as archs
from .configs import SHARED_MEMORY_LIMIT

CHECKS = {
    "compiles": "Triton and ptxas build it for the target (the PTX targets sm_90a, sm_80 or "
                "sm_89)",
    "smem": f"shared memory within the target's per-block limit ({SHARED_MEMORY_LIMIT} B on "
            f"sm_90a, {archs.AMPERE.smem_limit} B on sm_80, {archs.ADA.smem_limit} B on sm_89)",
    "spill": "no register spills and no local memory (ptxas -v: 0 bytes spill stores and "
             "loads, 0 bytes stack frame)",
    "wgmma": "the dot runs on the target's tensor-core MMA: wgmma on sm_90a (not mma.sync), "
             "mma.sync on sm_80/sm_89 (not FMA)",
    "serial": "ptxas did not serialize wgmma (C7510, C7515: 'wgmma ... serialized')",
    "warn": "ptxas printed no warning (e.g. a register target it ignored)",
    "model_bound": "the kernel's shared-memory model (plus its stated slack) is at least "
                   "the compiled size (configs chosen by the model fit)",
    "model": "the kernel's shared-memory model equals the compiled size (or lies at most "
             "its stated slack below it)",
    "wait": "main-loop wgmma.wait_group depth >= 1 (the next MMA overlaps the last)",
    "a_regs": "wgmma takes its A operand from registers",
    "tma": "the loads go through TMA (cp.async.bulk.tensor)",
    "a_hazard": "no instruction writes a register of a still-pending wgmma's register-A "
                "operand (SASS, every path; kernel_tools/sass_hazard.py; vacuous without "
                "register-A HGMMA)",
}
DEFAULT_CHECKS = ("compiles", "smem", "spill", "wgmma", "serial", "warn", "a_hazard")


@dataclasses.dataclass
class Variant:
    """One real kernel call to compile (see the module doc)."""

    kernel: str
    case: str
    fn: Any
    args: tuple
    kwargs: Mapping[str, Any]
    shared_model: Callable[[Any], int] | None = None
    checks: tuple[str, ...] = DEFAULT_CHECKS
    allow: Mapping[str, str] = dataclasses.field(default_factory=dict)
    core: bool = True
    #: For a launcher without autotune: its config's name and tiles, shown in the table.
    config: str = "-"
    tiles: str = "-"
    #: Bytes the compiled size may exceed ``shared_model`` by (``model``, ``model_bound``).
    shared_slack: int = 0
    #: Gated (and dispatched) on sm_90a only; implied by a ``tma`` or ``a_regs`` check.
    hopper_only: bool = False
    #: The targets to gate it on, overriding the rule above (e.g. a launch made only off
    #: Hopper: ``("sm_80", "sm_89")``).
    targets: tuple[str, ...] | None = None
    #: Allowed failures (check -> reason) on sm_80/sm_89 only, added to ``allow`` there.
    allow_off_hopper: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.checks) | set(self.allow) | set(self.allow_off_hopper)
        unknown -= set(CHECKS)
        if unknown:
            raise ValueError(f"{self.kernel} {self.case}: unknown checks {sorted(unknown)}")


def stand_in_call(lengths: list[int], num_models: int, n_dim: int, k_dim: int, dtype,
                  *, bias: bool = True, stacked: bool = True) -> tuple:
    """CPU tensors of a real call, allocated and never touched: (x [T, K], weight [M, N, K],
    coeffs [G, M] fp32, offsets [G+1] int64, bias [M, N] or None, y [T, N]), groups of
    ``lengths`` rows. ``stacked=False``: the models' weights are not back to back (a view
    of a taller buffer), as when they come from separate tensors."""
    import torch

    num_rows = sum(lengths)
    x = torch.empty((num_rows, k_dim), dtype=dtype)
    weight = torch.empty((num_models, n_dim + (0 if stacked else 16), k_dim), dtype=dtype)
    weight = weight[:, :n_dim]
    coeffs = torch.empty((len(lengths), num_models), dtype=torch.float32)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    b = torch.empty((num_models, n_dim), dtype=dtype) if bias else None
    y = torch.empty((num_rows, n_dim), dtype=dtype)
    return x, weight, coeffs, offsets, b, y


def grouping(num_rows: int, num_groups: int) -> tuple[str, list[int]]:
    """(name, lengths) of ``num_rows`` rows in ``num_groups`` near-equal groups."""
    lengths = [num_rows // num_groups] * num_groups
    lengths[-1] += num_rows - sum(lengths)
    if num_groups == 1:
        return f"one group of {num_rows} rows", lengths
    return f"{num_groups} groups x ~{num_rows // num_groups} rows", lengths
