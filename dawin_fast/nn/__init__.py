"""Modules: drop-in replacements that run M models' interpolation through fused kernels."""

from .linear import DaWinLinear
from .routing import Routing, current_routing, route

__all__ = ["DaWinLinear", "Routing", "current_routing", "route"]
