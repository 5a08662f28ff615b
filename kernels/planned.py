"""A kernel launch as data: what ``kernel[grid](*args, **kwargs)`` will run.

The launchers of the kernels configured by rule (``swapab_gluon``, ``swapab_twin``,
``epilogue_scaled``, ``wstat_gluon``, ``wstat_twin``) first plan
their launch (every argument, constexpr and launch option) and then run the plan. The
compile gate (``kernel_tools.compile_gate``) compiles the same plans for sm_90a on a CPU, so what it
checks cannot drift from what is launched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlannedLaunch:
    kernel: Any  #: a ``triton.jit`` or Gluon ``jit`` function
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict  #: constexprs and launch options (num_warps, num_stages, maxnreg)

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.kwargs)
