"""``dawinize``: turn M models of one architecture into one interpolating model.

The converted model has model 0's structure and code (its ``forward`` methods run
unchanged); every layer holding parameters is replaced by its interpolating version:

==========================================  ==============================================
``nn.Linear``                               ``DaWinLinear`` (fused kernel)
``nn.MultiheadAttention``                   ``DaWinMultiheadAttention`` (fused QKV/out)
``nn.Conv2d`` with stride = kernel          ``DaWinPatchEmbed`` (fused kernel over patches)
``nn.LayerNorm``                             ``DaWinLayerNorm``
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

A subclass of a converted layer type (``nn.Linear``, ``nn.LayerNorm``, ...) that overrides
``forward`` computes something else than its base, so it raises at conversion unless the
caller gives it a converter (``dawinize(models, converters={MyNorm: fn})``, ``fn(modules,
name) -> module``).

Floating-point parameters held directly by a container module (a class token, a positional
embedding) are sum_i c_i theta_i like every layer's, even when equal in every model (then
(sum_i c_i) theta): a parameter whose leading dim is 1 (the batch-broadcast layout, e.g.
timm's ``cls_token`` [1, 1, D]) becomes [B, ...] per sample; any other shape has one value
for the whole batch, so it works with one coefficient row per forward (or, when equal in
every model, rows with one sum), and other rows raise. Other parameters and buffers must be
equal in all models and stay shared. Any other layer type holding parameters (BatchNorm, a
general convolution, ...) raises a clear error at conversion.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .arguments import argument_names, check_declarations, sort_arguments, unsort_output
from .grouped import GroupedModel, as_coeffs
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
from .routing import Routing, name_layers, require_routing

#: ``fn(modules, name) -> module``: builds the interpolating module for M layers.
Converter = Callable[[Sequence[nn.Module], str], nn.Module]


def _is_layer_scale(module: nn.Module) -> bool:
    return (type(module).__name__ == "LayerScale"
            and set(dict(module.named_parameters(recurse=False))) == {"gamma"})


def _linear(modules: Sequence[nn.Module], what: str) -> nn.Module:
    try:
        return DaWinLinear.from_linears(modules)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: {err}") from None


# Layer types converted by their parameters alone: a subclass that overrides forward
# (Gemma's scaled embedding, Falcon's linear, timm's channels-first LayerNorm2d) computes
# something else, so it must have its own converter or be refused, never converted as the
# base class.
_PLAIN_FORWARD = (nn.Linear, nn.Embedding, nn.Conv2d, nn.LayerNorm, nn.MultiheadAttention)

# Subclasses whose forward computes what the base's does (the same last-dimension norm,
# with a faster kernel or a cast back to the input's dtype, as DaWinLayerNorm does).
_SAME_AS_BASE = {("timm.layers.norm", "LayerNorm"), ("open_clip.transformer", "LayerNorm"),
                 ("open_clip.transformer", "LayerNormFp32")}


def _overrides_forward(module: nn.Module) -> bool:
    base = next((b for b in _PLAIN_FORWARD if isinstance(module, b)), None)
    cls = type(module)
    return (base is not None and cls.forward is not base.forward
            and (cls.__module__, cls.__name__) not in _SAME_AS_BASE)


def _refuse_own_forward(modules: Sequence[nn.Module], what: str) -> nn.Module:
    cls = type(modules[0])
    base = next(b for b in _PLAIN_FORWARD if isinstance(modules[0], b))
    raise ValueError(f"{what}: layer type {cls.__name__} subclasses nn.{base.__name__} with "
                     f"its own forward, which dawinize cannot interpolate as an "
                     f"nn.{base.__name__}; give it a converter: dawinize(models, "
                     f"converters={{{cls.__name__}: fn}})")


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


class ScaledTensor(nn.Module):
    """A free floating-point tensor equal in all M models: sum_i c_i theta = (sum_i c_i) theta.

    ``forward()`` is laid out like ``InterpolatedTensor``'s: [B, *S] under a routing with
    groups, [1, *S] under a single coefficient row. One copy is stored, not M.
    """

    routing_name: str | None = None  # see DaWinLinear

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value, requires_grad=False)

    def table(self, routing: Routing) -> torch.Tensor:
        """[G, *S]: the value scaled by each group's row sum (computed in float32)."""
        sums = routing.coeffs.sum(dim=1).to(self.value.device)
        scaled = sums.reshape(-1, *([1] * self.value.dim())) * self.value.float()
        return scaled.to(self.value.dtype)

    def forward(self) -> torch.Tensor:
        routing = require_routing("ScaledTensor").resolve(self.routing_name)
        table = self.table(routing)
        if routing.offsets is None:
            return table
        return table[routing.groups_of_rows(routing.num_samples)]


def _is_broadcast_layout(shape: torch.Size) -> bool:
    return len(shape) >= 1 and shape[0] == 1


def _one_sum(routing: Routing) -> bool:
    """Whether every coefficient row has the same sum (to float32 rounding)."""
    sums = routing.coeffs.sum(dim=1)
    return bool(torch.allclose(sums, sums[:1].expand_as(sums), rtol=1e-6, atol=1e-6))


def _remedy(module: nn.Module) -> str:
    if any(c.__module__.startswith("open_clip") for c in type(module).__mro__):
        return ("For open_clip models use DaWinViT.from_open_clip([m.visual for m in "
                "models]) (and DaWinClassifier for heads), which interpolates them per sample.")
    return "Write a dedicated module for this architecture (as DaWinViT does for open_clip)."


def _per_sample_property(name: str, shape: torch.Size, what: str) -> property:
    """Attribute ``name`` of a converted container: its interpolation under the routing."""
    store = f"_dawin_{name}"

    def get(module: nn.Module) -> torch.Tensor:
        tensor = getattr(module, store)
        routing = require_routing(what).resolve(tensor.routing_name)
        if routing.offsets is None:
            return tensor()[0]
        if _is_broadcast_layout(shape):
            return tensor().reshape(-1, *shape[1:])  # [B, ...]: one value per sample
        if isinstance(tensor, ScaledTensor) and _one_sum(routing):
            return tensor.table(routing)[0]  # the same value for every sample
        differs = ("differs between the models" if isinstance(tensor, InterpolatedTensor)
                   else "is scaled by each row's sum, and the rows' sums differ,")
        raise RuntimeError(
            f"{what} {tuple(shape)} {differs} and has no leading batch-broadcast dim of size "
            f"1, so dawinize can interpolate it only with one coefficient row per forward "
            f"(WiSE-FT style), not per group. {_remedy(module)}"
        )

    return property(get)


# Per-instance registries that copy.copy would share between model 0 and its conversion.
_HOOK_REGISTRIES = ("_forward_hooks", "_forward_hooks_with_kwargs",
                    "_forward_hooks_always_called", "_forward_pre_hooks",
                    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
                    "_state_dict_hooks", "_state_dict_pre_hooks",
                    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _refuse_pickle(self: nn.Module, protocol: int) -> Any:
    raise TypeError(f"{type(self).__name__}: a dawinized model cannot be saved whole "
                    f"(its classes are built at run time); save merged.state_dict() and load it "
                    f"into dawinize(models) built the same way")


def _deepcopy(self: nn.Module, memo: dict) -> nn.Module:
    """copy.deepcopy without the pickling protocol (which a dawinized model refuses)."""
    new = type(self).__new__(type(self))
    memo[id(self)] = new
    new.__dict__.update(copy.deepcopy(self.__dict__, memo))
    return new


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _find_converter(module: nn.Module, converters: Mapping[type, Converter]
                    ) -> Converter | None:
    return next((fn for cls in type(module).__mro__ if (fn := converters.get(cls))), None)


def convert_modules(models: Sequence[nn.Module], path: str = "",
                    converters: Mapping[type, Converter] | None = None) -> nn.Module:
    """Model 0's structure with every layer holding parameters made interpolating.

    The models must share one architecture; the first difference (a module type, a
    parameter's shape or dtype, a buffer's value) raises a ``ValueError`` naming it by its
    ``named_modules()`` name under ``path``. ``converters``: {layer type: ``fn(modules,
    name)``} for layer types of the caller's own (tried first, subclasses included).
    """
    converters = dict(converters or {})
    first = models[0]
    what = path or type(first).__name__
    for i, m in enumerate(models[1:], start=1):
        if type(m) is not type(first):
            raise ValueError(f"{what}: model {i} is {type(m).__name__}, model 0 is "
                             f"{type(first).__name__}")
    custom = _find_converter(first, converters)
    if custom is not None:
        return custom(models, what)
    if not _has_state(first):
        return copy.deepcopy(first)  # stateless (activation, dropout, identity): a copy
    for predicate, converter in CONVERTERS:
        if predicate(first):
            return converter(models, what)
    children = dict(first.named_children())
    if not children and any(True for _ in first.parameters(recurse=False)):
        names = ", ".join(n for n, _ in first.named_parameters(recurse=False))
        raise ValueError(f"{what}: layer type {type(first).__name__} (parameters: {names}) "
                         f"is not supported by dawinize; give it a converter: "
                         f"dawinize(models, converters={{{type(first).__name__}: fn}})")
    for i, m in enumerate(models[1:], start=1):
        if dict(m.named_children()).keys() != children.keys():
            raise ValueError(f"{what}: model {i} has children {list(dict(m.named_children()))},"
                             f" model 0 has {list(children)}")

    # A shallow copy of model 0 with its own registries: the originals stay untouched, and
    # what is shared (equal in every model) is cloned, so .to() never moves model 0's state.
    converted = copy.copy(first)
    converted.__dict__ = dict(first.__dict__)
    for registry in _HOOK_REGISTRIES:  # hooks added later to one never fire in the other
        if isinstance(getattr(first, registry, None), dict):
            converted.__dict__[registry] = type(first.__dict__[registry])(
                first.__dict__[registry])
    converted._modules = {
        name: None if child is None else
        convert_modules([m._modules[name] for m in models], _child(path, name), converters)
        for name, child in first._modules.items()
    }
    converted._buffers = {}
    for name, buf in first._buffers.items():
        for i, m in enumerate(models[1:], start=1):
            other = m._buffers.get(name)
            if (buf is None) != (other is None) or (buf is not None and not torch.equal(
                    buf, other.to(buf.device))):
                raise ValueError(f"{_child(path, name)}: buffer differs between model 0 and "
                                 f"model {i}")
        converted._buffers[name] = None if buf is None else buf.clone()
    converted._parameters = {}
    properties: dict[str, property] = {}
    for name, param in first._parameters.items():
        others = [m._parameters.get(name) for m in models]
        equal = param is None or all(
            o is not None and o.shape == param.shape and o.dtype == param.dtype
            and o.device == param.device and torch.equal(o, param) for o in others)
        if param is None or (equal and not param.is_floating_point()):
            converted._parameters[name] = (  # not interpolated: one frozen copy
                None if param is None else nn.Parameter(param.detach().clone(),
                                                        requires_grad=False))
            continue
        where = _child(path, name)
        if not _is_broadcast_layout(param.shape) and any(
                c.__module__.startswith("open_clip") for c in type(first).__mro__):
            raise ValueError(
                f"{where} {tuple(param.shape)} has no leading batch-broadcast dim of size 1, "
                f"so dawinize could interpolate it only with one coefficient row per forward "
                f"(WiSE-FT style), not per sample. {_remedy(first)}")
        converted._modules[f"_dawin_{name}"] = (
            ScaledTensor(param.detach().clone()) if equal
            else InterpolatedTensor.from_tensors(others, where))
        properties[name] = _per_sample_property(name, param.shape, where)
    if properties:
        cls = type(first)
        converted.__class__ = type(f"DaWin{cls.__name__}", (cls,), {
            **properties, "__reduce_ex__": _refuse_pickle, "__deepcopy__": _deepcopy})
    return converted


def _names_parameter(forward: Callable[..., Any], name: str) -> bool:
    """Whether ``forward`` names a parameter ``name`` (a bare ``**kwargs`` does not count:
    Hugging Face models that take loss targets name ``labels``)."""
    try:
        return name in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return True


class DaWinModel(GroupedModel):
    """What ``dawinize`` returns: ``merged(x, coeffs, *args, **model_kwargs)``.

    ``coeffs``: one row [M] for the whole batch, rows [B, M] (one per sample), or a [G, M]
    table with ``cluster_labels`` [B]. Every other argument goes to the wrapped model
    (``labels`` included: Hugging Face models take their loss targets there); the batch is
    sorted by group internally, per-sample arguments with it (the rule is in
    ``dawin_fast.nn.arguments``: declare ambiguous ones with ``per_sample=[names]`` or
    ``shared=[names]``), and outputs come back in the caller's order.
    ``layer_coeffs``: per-layer coefficients (see ``GroupedModel``).
    """

    def __init__(self, module: nn.Module, num_models: int) -> None:
        super().__init__()
        self.module = module
        self.num_models = num_models
        #: layers that read dim 1 as the batch (per-sample rows cannot follow them).
        self.sequence_first = [name for name, m in module.named_modules()
                               if getattr(m, "batch_first", None) is False]

    def forward(self, x: Any = None, coeffs: Any = None, *args: Any,
                cluster_labels: torch.Tensor | None = None,
                layer_coeffs: Mapping[str, Any] | None = None,
                per_sample: Collection[str] = (), shared: Collection[str] = (),
                **kwargs: Any) -> Any:
        """Run the model with sample b under its row (see the class docstring)."""
        who = "DaWinModel"
        positional = (x, *args) if x is not None else args
        if "labels" in kwargs and not _names_parameter(self.module.forward, "labels"):
            raise TypeError(f"{who}: labels= goes to the model, whose forward takes no labels; "
                            f"DaWin's cluster labels are cluster_labels=")
        names = argument_names(self.module.forward, len(positional))
        check_declarations(per_sample, shared, [*names, *kwargs], who)
        first = next((t for t in (*positional, *kwargs.values())
                      if isinstance(t, torch.Tensor) and t.dim() >= 1), None)
        if first is None:
            raise ValueError(f"{who}: the call passes no input tensor [B, ...]")
        coeffs = as_coeffs(coeffs, first.device, who)
        if cluster_labels is not None or (coeffs.dim() == 2 and coeffs.shape[0] > 1):
            self.check_per_sample()  # before reading the input's dims
        if cluster_labels is None and coeffs.dim() == 2 and coeffs.shape[0] > 1:
            batch = coeffs.shape[0]
        else:
            batch = first.shape[0]
        if positional and isinstance(positional[0], torch.Tensor) and \
                positional[0].dim() >= 1 and positional[0].shape[0] != batch:
            raise ValueError(f"{who}: input {names[0]!r} has {positional[0].shape[0]} samples "
                             f"(dim 0), but coeffs give rows for {batch}")

        def run(permute: Any) -> Any:
            if permute is None:
                return self.module(*positional, **kwargs)
            sorted_args, sorted_kwargs = sort_arguments(
                positional, kwargs, names, batch, permute, per_sample, shared, who)
            return self.module(*sorted_args, **sorted_kwargs)

        return self.run_grouped(run, coeffs, cluster_labels, layer_coeffs, batch, first.device,
                                lambda out, unpermute: unsort_output(out, unpermute, batch, who))

    def check_per_sample(self) -> None:
        if self.sequence_first:
            raise ValueError(
                f"DaWinModel: layer {self.sequence_first[0]!r} is sequence-first "
                f"(batch_first=False), so per-sample rows cannot follow its samples; build "
                f"the models with batch_first=True (inputs [B, L, ...]), or pass one row [M] "
                f"for the whole batch")

    def forward_routed(self, x: torch.Tensor, **kwargs: Any) -> Any:
        return self.module(x, **kwargs)

    __reduce_ex__ = _refuse_pickle
    __deepcopy__ = _deepcopy


def dawinize(models: Sequence[nn.Module],
             converters: Mapping[type, Converter] | None = None) -> DaWinModel | DaWinCausalLM:
    """One module running any interpolation of M same-architecture models, fused.

    Hugging Face causal LMs come back as a ``DaWinCausalLM`` (one row per sequence,
    ``forward`` and ``generate``); every other model as a ``DaWinModel``.

    Example::

        merged = dawinize([zero_shot, fine_tuned])
        logits = merged(images, coeffs=torch.tensor([0.5, 0.5]))   # WiSE-FT
        logits = merged(images, coeffs=per_sample_rows)             # [B, 2] DaWin

    Every converted layer is named as in ``models[0].named_modules()``, the names
    per-layer coefficients use (``merged(x, coeffs, layer_coeffs={"blocks.3": row})``) and
    error messages give. ``converters``: {layer type: ``fn(modules, name) -> module``} for
    layer types ``dawinize`` does not convert or refuses (the module returned must read the
    routing, e.g. be built from ``DaWinLinear`` and the other ``dawin_fast.nn`` layers).
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
        converted = convert_modules(models, converters=converters)
        tie_embeddings(models, converted)
        return DaWinCausalLM(name_layers(make_routed(converted, len(models))),
                             len(models)).eval()
    return DaWinModel(name_layers(convert_modules(models, converters=converters)),
                      len(models)).eval()
