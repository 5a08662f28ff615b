"""Modules: drop-in replacements that run M models' interpolation through fused kernels."""

from .classifier import DaWinClassifier
from .convert import DaWinModel, convert_modules, dawinize
from .grouped import GroupedModel
from .layers import (
    DaWinEmbedding,
    DaWinLayerNorm,
    DaWinLayerScale,
    DaWinMultiheadAttention,
    DaWinPatchEmbed,
    InterpolatedTensor,
)
from .linear import DaWinLinear
from .routing import Routing, current_routing, route

__all__ = [
    "DaWinClassifier",
    "DaWinEmbedding",
    "DaWinLayerNorm",
    "DaWinLayerScale",
    "DaWinLinear",
    "DaWinModel",
    "DaWinMultiheadAttention",
    "DaWinPatchEmbed",
    "GroupedModel",
    "InterpolatedTensor",
    "Routing",
    "convert_modules",
    "current_routing",
    "dawinize",
    "route",
]
