"""Modules: drop-in replacements that run M models' interpolation through fused kernels.

Layers (``DaWinLinear``, attention, norms, embeddings), the routing that tells them which
coefficients each sample uses, whole models (``DaWinViT``, ``dawinize``,
``DaWinClassifier``, ``DaWinCausalLM`` for Hugging Face causal LMs) and the
group-sort-unsort wrapper they share (``GroupedModel``).

May import: ``dawin_fast.ops`` (the op and its checks), ``dawin_fast.algorithm`` (grouping)
and this folder; never ``kernels`` directly, ``pipeline``, ``bench`` or ``app``. No I/O.
"""

from .classifier import DaWinClassifier
from .convert import DaWinModel, convert_modules, dawinize
from .grouped import GroupedModel
from .hf_lm import DaWinCausalLM, DaWinRMSNorm
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
from .vit import DaWinViT

__all__ = [
    "DaWinCausalLM",
    "DaWinClassifier",
    "DaWinEmbedding",
    "DaWinLayerNorm",
    "DaWinLayerScale",
    "DaWinLinear",
    "DaWinModel",
    "DaWinMultiheadAttention",
    "DaWinPatchEmbed",
    "DaWinRMSNorm",
    "DaWinViT",
    "GroupedModel",
    "InterpolatedTensor",
    "Routing",
    "convert_modules",
    "current_routing",
    "dawinize",
    "route",
]
