"""Triton kernels of dawin_fast (installed as ``dawin_fast.kernels``).

Pure kernels, their configs and launchers (with the cost model the dispatch ranks by, and
each kernel's declaration of what the compile gate builds, ``gate_spec``): they know linear
algebra, not DaWin. Imports Triton and nothing of dawin_fast; the tools that build, check
and report on these kernels live in ``dawin_fast.kernel_tools``.
"""

from .configs import interpreting
from .interp_matmul import (
    STRATEGIES,
    candidates,
    choose_strategy,
    default_strategy,
    interp_matmul,
)

__all__ = ["STRATEGIES", "candidates", "choose_strategy", "default_strategy", "interp_matmul",
           "interpreting"]
