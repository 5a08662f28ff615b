"""``dawinize``: turn M models of one architecture into one interpolating model.

The converted model has model 0's structure and code (its ``forward`` methods run
unchanged); every layer holding parameters is replaced by its interpolating version:

==========================================  ==============================================
``nn.Linear``                               ``DaWinLinear`` (fused kernel)
``nn.MultiheadAttention``                   ``DaWinMultiheadAttention`` (fused QKV/out)
``nn.Conv2d`` with stride = kernel          ``DaWinPatchEmbed`` (fused kernel over patches)
``nn.LayerNorm`` (and subclasses)           ``DaWinLayerNorm``
``nn.Embedding``                            ``DaWinEmbedding``
HF ``*ScaledWordEmbedding`` (Gemma)         ``DaWinScaledEmbedding``
a ``LayerScale`` (``gamma``; open_clip/timm)  ``DaWinLayerScale``
HF ``CLIPVisionEmbeddings``                 ``DaWinCLIPVisionEmbeddings``
HF ``Conv1D`` (GPT-2)                       ``DaWinLinear`` (weight transposed)
a ``*RMSNorm`` with one weight [D]          ``DaWinRMSNorm`` (Llama, Qwen2, Mistral, ...)
==========================================  ==============================================

A Hugging Face model that generates (``*ForCausalLM``, ``GPT2LMHeadModel``) comes back as a
``DaWinCausalLM`` (``merged(input_ids, coeffs)``, ``merged.generate(..., coeffs=rows)``;
see ``dawin_fast.nn.hf_lm``). Modules holding only buffers (rotary embeddings) are copied
when the buffers are equal in every model.

A subclass of ``nn.Linear``, ``nn.Embedding`` or ``nn.Conv2d`` that overrides ``forward``
raises unless it has a converter of its own (it computes something else than its base).

Parameters held directly by a container module (a class token, a positional embedding)
are interpolated per group: a parameter whose leading dim is 1 (the batch-broadcast
layout, e.g. timm's ``cls_token`` [1, 1, D]) becomes [B, ...] per sample; any other shape
can only be interpolated with one coefficient row per forward, and asking for more raises.
Parameters and buffers equal in all models stay shared. Any other layer type holding
parameters (BatchNorm, a general convolution, ...) raises a clear error at conversion.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .grouped import GroupedModel
from .hf_clip import DaWinCLIPVisionEmbeddings, is_hf_clip_vision_embeddings
from .hf_lm import (
    DaWinCausalLM,
    DaWinRMSNorm,
    DaWinScaledEmbedding,
    conv1d_linear,
    is_conv1d,
    is_hf_causal_lm,
    is_rms_norm,
    is_scaled_embedding,
    make_routed,
    tie_embeddings,
)
from .layers import (
    DaWinEmbedding,
    DaWinLayerNorm,
    DaWinLayerScale,
    DaWinMultiheadAttention,
    DaWinPatchEmbed,
    InterpolatedTensor,
)
from .linear import DaWinLinear
from .routing import name_layers, require_routing


def _is_layer_scale(module: nn.Module) -> bool:
    return (type(module).__name__ == "LayerScale"
            and set(dict(module.named_parameters(recurse=False))) == {"gamma"})


def _linear(modules: Sequence[nn.Module], what: str) -> nn.Module:
    try:
        return DaWinLinear.from_linears(modules)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: {err}") from None


# Layer types converted by their parameters alone: a subclass that overrides forward
# (Gemma's scaled embedding, Falcon's linear) computes something else, so it must have its
# own converter or be refused, never converted as the base class.
_PLAIN_FORWARD = (nn.Linear, nn.Embedding, nn.Conv2d)


def _overrides_forward(module: nn.Module) -> bool:
    base = next((b for b in _PLAIN_FORWARD if isinstance(module, b)), None)
    return base is not None and type(module).forward is not base.forward


def _refuse_own_forward(modules: Sequence[nn.Module], what: str) -> nn.Module:
    cls = type(modules[0])
    base = next(b for b in _PLAIN_FORWARD if isinstance(modules[0], b))
    raise ValueError(f"{what}: layer type {cls.__name__} subclasses nn.{base.__name__} with "
                     f"its own forward, which dawinize cannot interpolate")


# (predicate, converter) pairs, tried in order on model 0's module.
CONVERTERS: list[tuple[Callable[[nn.Module], bool], Callable[..., nn.Module]]] = [
    (is_hf_clip_vision_embeddings, DaWinCLIPVisionEmbeddings.from_modules),
    (is_scaled_embedding, DaWinScaledEmbedding.from_modules),
    (_overrides_forward, _refuse_own_forward),
    (lambda m: isinstance(m, nn.Linear), _linear),
    (lambda m: isinstance(m, nn.MultiheadAttention), DaWinMultiheadAttention.from_modules),
    (lambda m: isinstance(m, nn.Conv2d), DaWinPatchEmbed.from_modules),
    (lambda m: isinstance(m, nn.LayerNorm), DaWinLayerNorm.from_modules),
    (lambda m: isinstance(m, nn.Embedding), DaWinEmbedding.from_modules),
    (_is_layer_scale, DaWinLayerScale.from_modules),
    (is_conv1d, conv1d_linear),
    (is_rms_norm, DaWinRMSNorm.from_modules),
]


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _per_sample_property(name: str, shape: torch.Size, what: str) -> property:
    """Attribute ``name`` of a converted container: its interpolation under the routing."""
    store = f"_dawin_{name}"

    def get(module: nn.Module) -> torch.Tensor:
        routing = require_routing(what).resolve(getattr(module, store).routing_name)
        if routing.offsets is not None and (len(shape) == 0 or shape[0] != 1):
            remedy = ("For open_clip models use DaWinViT.from_open_clip([m.visual for m in "
                      "models]) (and DaWinClassifier for heads), which interpolates them per "
                      "sample." if any(c.__module__.startswith("open_clip")
                                      for c in type(module).__mro__) else
                      "Write a dedicated module for this architecture (as DaWinViT does for "
                      "open_clip).")
            raise RuntimeError(
                f"{what} {tuple(shape)} differs between the models and has no leading "
                f"batch-broadcast dim of size 1, so dawinize can interpolate it only with one "
                f"coefficient row per forward (WiSE-FT style), not per group. {remedy}"
            )
        value = getattr(module, store)()  # [1 or B, *shape]: InterpolatedTensor's layout
        return value[0] if routing.offsets is None else value.reshape(-1, *shape[1:])

    return property(get)


def convert_modules(models: Sequence[nn.Module], path: str = "model") -> nn.Module:
    """Model 0's structure with every layer holding parameters made interpolating.

    The models must share one architecture; the first difference (a module type, a
    parameter's shape or dtype, a buffer's value) raises a ``ValueError`` naming it.
    """
    first = models[0]
    for i, m in enumerate(models[1:], start=1):
        if type(m) is not type(first):
            raise ValueError(f"{path}: model {i} is {type(m).__name__}, model 0 is "
                             f"{type(first).__name__}")
    if not _has_state(first):
        return copy.deepcopy(first)  # stateless (activation, dropout, identity): a copy
    for predicate, converter in CONVERTERS:
        if predicate(first):
            return converter(models, path)
    children = dict(first.named_children())
    if not children and any(True for _ in first.parameters(recurse=False)):
        names = ", ".join(n for n, _ in first.named_parameters(recurse=False))
        raise ValueError(f"{path}: layer type {type(first).__name__} (parameters: {names}) "
                         f"is not supported by dawinize")
    for i, m in enumerate(models[1:], start=1):
        if dict(m.named_children()).keys() != children.keys():
            raise ValueError(f"{path}: model {i} has children {list(dict(m.named_children()))},"
                             f" model 0 has {list(children)}")

    # A shallow copy of model 0 with its own registries: the originals stay untouched, and
    # what is shared (equal in every model) is cloned, so .to() never moves model 0's state.
    converted = copy.copy(first)
    converted.__dict__ = dict(first.__dict__)
    converted._modules = {
        name: None if child is None else
        convert_modules([m._modules[name] for m in models], f"{path}.{name}")
        for name, child in first._modules.items()
    }
    converted._buffers = {}
    for name, buf in first._buffers.items():
        for i, m in enumerate(models[1:], start=1):
            other = m._buffers.get(name)
            if (buf is None) != (other is None) or (buf is not None and not torch.equal(
                    buf, other.to(buf.device))):
                raise ValueError(f"{path}.{name}: buffer differs between model 0 and model {i}")
        converted._buffers[name] = None if buf is None else buf.clone()
    converted._parameters = {}
    properties: dict[str, property] = {}
    for name, param in first._parameters.items():
        others = [m._parameters.get(name) for m in models]
        if param is None or all(
            o is not None and o.shape == param.shape and o.dtype == param.dtype
            and o.device == param.device and torch.equal(o, param) for o in others
        ):
            converted._parameters[name] = (  # identical in every model: one frozen copy
                None if param is None else nn.Parameter(param.detach().clone(),
                                                        requires_grad=False))
            continue
        interpolated = InterpolatedTensor.from_tensors(others, f"{path}.{name}")
        converted._modules[f"_dawin_{name}"] = interpolated
        properties[name] = _per_sample_property(name, param.shape, f"{path}.{name}")
    if properties:
        cls = type(first)
        converted.__class__ = type(f"DaWin{cls.__name__}", (cls,), properties)
    return converted


class DaWinModel(GroupedModel):
    """What ``dawinize`` returns: ``forward(x, coeffs, labels=None, **kwargs)``.

    ``x`` [B, ...] is the batch (sorted by group internally; other arguments are passed
    through unchanged to the wrapped model); outputs come back in the caller's order.
    """

    def __init__(self, module: nn.Module, num_models: int) -> None:
        super().__init__()
        self.module = module
        self.num_models = num_models

    def forward_routed(self, x: torch.Tensor, **kwargs: Any) -> Any:
        return self.module(x, **kwargs)


def dawinize(models: Sequence[nn.Module]) -> DaWinModel | DaWinCausalLM:
    """One module running any interpolation of M same-architecture models, fused.

    Hugging Face causal LMs come back as a ``DaWinCausalLM`` (one row per sequence,
    ``forward`` and ``generate``); every other model as a ``DaWinModel``.

    Example::

        merged = dawinize([zero_shot, fine_tuned])
        logits = merged(images, coeffs=torch.tensor([0.5, 0.5]))   # WiSE-FT
        logits = merged(images, coeffs=per_sample_rows)             # [B, 2] DaWin

    Every converted layer is named as in ``models[0].named_modules()``, the names
    per-layer coefficients use (``merged(x, coeffs, layer_coeffs={"blocks.3": row})``).
    """
    models = list(models)
    if not models:
        raise ValueError("dawinize: need at least one model")
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise TypeError(f"dawinize: item {i} is {type(m).__name__}, not an nn.Module")
    if is_hf_causal_lm(models[0]):
        if getattr(models[0].config, "is_encoder_decoder", False):
            raise ValueError(f"dawinize: {type(models[0]).__name__} is an encoder-decoder "
                             f"model; only decoder-only causal LMs are supported")
        converted = convert_modules(models)
        tie_embeddings(models, converted)
        return DaWinCausalLM(name_layers(make_routed(converted, len(models))),
                             len(models)).eval()
    return DaWinModel(name_layers(convert_modules(models)), len(models)).eval()
