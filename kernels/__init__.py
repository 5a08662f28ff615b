"""Triton kernels of dawin_fast (installed as ``dawin_fast.kernels``).

Pure kernels and their launchers: they know linear algebra, not DaWin.
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
