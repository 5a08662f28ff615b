"""dawin_fast: fused weight-interpolation kernels and modules for DaWin."""

from .nn import DaWinLinear, Routing, route
from .ops import interp_linear, interp_linear_torch, skip_value_checks, use_backend

__all__ = [
    "DaWinLinear",
    "Routing",
    "interp_linear",
    "interp_linear_torch",
    "route",
    "skip_value_checks",
    "use_backend",
]
__version__ = "0.1.0"
