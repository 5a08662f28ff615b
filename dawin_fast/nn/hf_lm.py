"""Hugging Face causal language models, interpolated per sequence (used by ``dawinize``).

``dawinize([llama_a, llama_b, llama_c])`` returns a ``DaWinCausalLM``: model 0's
``*ForCausalLM`` with every layer made interpolating, run with one coefficient row per
sequence, through ``forward`` and through Hugging Face's own ``generate`` (KV cache, left
padding, greedy, sampling, beam search).

How the rows reach the layers: the converted model's ``forward`` takes one more keyword,
``dawin_coeffs`` ([B, M], one row per sequence of the batch it sees), and runs the
original forward under a routing with one group per sequence (offsets 0, 1, ..., B; no
sorting, so the KV cache and the caller's order are untouched). ``generate`` passes the
rows as a model keyword: Hugging Face expands model keywords by ``num_beams`` and
``num_return_sequences`` (``repeat_interleave``, like ``input_ids``), and beam search only
reorders beams within one sequence's beams, whose rows are equal, so the rows stay aligned
with the cache. One row for all sequences travels as ``SharedRow`` (not a tensor, so never
expanded) and runs every layer as one group.

Layers recognised here (by class name and parameters; importing transformers is never
needed): transformers' ``Conv1D`` (GPT-2: a linear with the weight transposed) and any
``*RMSNorm`` whose only parameter is a weight [D] (Llama, Qwen2, Mistral, and Gemma's
``(1 + weight)`` form: the module's own forward runs with the interpolated weight), and
Gemma's ``*ScaledWordEmbedding`` (an embedding times a constant).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .layers import DaWinEmbedding
from .linear import DaWinLinear
from .routing import Routing, current_routing, require_routing, route


def is_hf_causal_lm(module: nn.Module) -> bool:
    """A Hugging Face model that can ``generate`` (decoder-only or encoder-decoder)."""
    can_generate = getattr(type(module), "can_generate", None)
    return (callable(can_generate) and hasattr(module, "config")
            and hasattr(module, "prepare_inputs_for_generation") and bool(can_generate()))


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2, GPT): ``x @ weight + bias`` with weight [in, out]."""
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")
            and set(dict(module.named_parameters(recurse=False))) <= {"weight", "bias"})


def conv1d_linear(convs: Sequence[nn.Module], what: str = "Conv1D") -> DaWinLinear:
    """M ``Conv1D`` layers as one ``DaWinLinear`` (weights transposed to [out, in])."""
    shapes = {(c.nx, c.nf, c.weight.dtype, c.weight.device, c.bias is not None) for c in convs}
    if len(shapes) != 1:
        raise ValueError(f"{what}: the models' Conv1D layers differ in shape, dtype, device "
                         f"or bias presence: {sorted(map(str, shapes))}")
    first = convs[0]
    layer = DaWinLinear(first.nx, first.nf, len(convs), bias=first.bias is not None,
                        device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([c.weight.t() for c in convs]))
        if layer.bias is not None:
            layer.bias.copy_(torch.stack([c.bias for c in convs]))
    return layer


def is_rms_norm(module: nn.Module) -> bool:
    params = dict(module.named_parameters(recurse=False))
    return (type(module).__name__.endswith("RMSNorm") and set(params) == {"weight"}
            and params["weight"].dim() == 1 and not any(True for _ in module.children()))


class DaWinRMSNorm(nn.Module):
    """An RMSNorm of M models: the model's own norm run with the per-group weight.

    The interpolated weight is laid out [B, 1, ..., D] (one per sequence) and passed to the
    module's forward in place of its weight (``torch.func.functional_call``), so every
    variant that multiplies the normalised input by its weight elementwise (``w * x``,
    Gemma's ``(1 + w) * x``) computes what the interpolated state dict computes.
    """

    routing_name: str | None = None  # see DaWinLinear

    def __init__(self, norm: nn.Module, stacked: torch.Tensor) -> None:
        super().__init__()
        self.norm = norm
        self.stacked = nn.Parameter(stacked, requires_grad=False)

    @classmethod
    def from_modules(cls, norms: Sequence[nn.Module], what: str = "RMSNorm") -> DaWinRMSNorm:
        first = norms[0]
        for i, n in enumerate(norms[1:], start=1):
            if n.weight.shape != first.weight.shape or n.weight.dtype != first.weight.dtype:
                raise ValueError(f"{what}: model {i} has weight {tuple(n.weight.shape)} "
                                 f"{n.weight.dtype}, model 0 {tuple(first.weight.shape)} "
                                 f"{first.weight.dtype}")
            extra = {k: v for k, v in vars(n).items() if not k.startswith("_") and k != "training"}
            if extra != {k: v for k, v in vars(first).items()
                         if not k.startswith("_") and k != "training"}:
                raise ValueError(f"{what}: model {i} has other settings ({extra})")
        norm = copy.deepcopy(first).requires_grad_(False)
        return cls(norm, torch.stack([n.weight.detach() for n in norms]))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        routing = require_routing("DaWinRMSNorm").resolve(self.routing_name, x)
        weight = routing.for_input(routing.interpolate(self.stacked), x)
        return functional_call(self.norm, {"weight": weight}, (x, *args), kwargs)


def is_scaled_embedding(module: nn.Module) -> bool:
    """Gemma's ``*ScaledWordEmbedding``: an ``nn.Embedding`` times a buffer ``embed_scale``."""
    return (isinstance(module, nn.Embedding) and type(module).__name__.endswith(
        "ScaledWordEmbedding") and isinstance(getattr(module, "embed_scale", None), torch.Tensor))


class DaWinScaledEmbedding(DaWinEmbedding):
    """``DaWinEmbedding`` times the models' common ``embed_scale`` (Gemma's token table)."""

    def __init__(self, stacked: torch.Tensor, embed_scale: torch.Tensor) -> None:
        super().__init__(stacked)
        self.register_buffer("embed_scale", embed_scale.clone(), persistent=False)

    @classmethod
    def from_modules(cls, embeddings: Sequence[nn.Module], what: str = "Embedding"):
        scale = embeddings[0].embed_scale
        for i, e in enumerate(embeddings[1:], start=1):
            if not torch.equal(e.embed_scale, scale):
                raise ValueError(f"{what}: model {i} has another embed_scale")
        return cls(DaWinEmbedding.from_modules(embeddings, what).weight.data, scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.embed_scale.to(self.weight.dtype)


class SharedRow:
    """One coefficient row for every sequence, as a ``generate`` model keyword.

    Not a tensor, so ``generate`` never expands it by beams; the layers run it as one group.
    """

    def __init__(self, row: torch.Tensor) -> None:
        self.row = row

    def __repr__(self) -> str:
        return f"SharedRow({self.row.tolist()})"


def _batch_size(args: tuple, kwargs: dict) -> int:
    for value in (*args[:1], kwargs.get("input_ids"), kwargs.get("inputs_embeds")):
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise ValueError("a DaWin causal LM needs input_ids or inputs_embeds [B, L, ...]")


def sequence_routing(coeffs: torch.Tensor | SharedRow, batch: int, num_models: int) -> Routing:
    """The routing for a batch of ``batch`` sequences: one group per sequence (rows [B, M])
    or one group for all (a ``SharedRow`` or a row [M])."""
    row = coeffs.row if isinstance(coeffs, SharedRow) else coeffs
    if not isinstance(row, torch.Tensor) or not row.is_floating_point():
        raise TypeError("coeffs must be a floating-point tensor [B, M] or [M]")
    if isinstance(coeffs, SharedRow) or row.dim() == 1:
        if row.shape[-1] != num_models or row.numel() != num_models:
            raise ValueError(f"coeffs: one row must hold M={num_models} coefficients, "
                             f"got {tuple(row.shape)}")
        return Routing(row.reshape(1, -1))
    if row.shape != (batch, num_models):
        raise ValueError(f"coeffs must be [B, M] = [{batch}, {num_models}] (one row per "
                         f"sequence) or one row [M], got {tuple(row.shape)}")
    return Routing(row, torch.arange(batch + 1, device=row.device))


def _routed_forward(original, num_models: int):
    """``original`` (a causal LM's forward) taking ``dawin_coeffs`` and routing them.

    Its signature (``inspect.signature``) is the original's plus ``dawin_coeffs``:
    ``generate`` reads it to decide which keywords the model accepts.
    """

    @functools.wraps(original)
    def forward(self, *args: Any, dawin_coeffs: Any = None, **kwargs: Any) -> Any:
        if dawin_coeffs is None:
            if current_routing() is None:
                raise RuntimeError(
                    f"{type(self).__name__} interpolates {num_models} models and needs "
                    f"coefficients: call merged(input_ids, coeffs, ...) or "
                    f"merged.generate(input_ids, coeffs=rows, ...)")
            return original(self, *args, **kwargs)
        routing = sequence_routing(dawin_coeffs, _batch_size(args, kwargs), num_models)
        with route(routing):
            return original(self, *args, **kwargs)

    signature = inspect.signature(original)
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("dawin_coeffs", inspect.Parameter.KEYWORD_ONLY,
                                        default=None))
    forward.__signature__ = signature.replace(parameters=params)
    return forward


def make_routed(converted: nn.Module, num_models: int) -> nn.Module:
    """Give a converted causal LM a forward that takes ``dawin_coeffs`` (a subclass of its
    class, so ``generate`` and every other method stay the model's own)."""
    cls = type(converted)
    converted.__class__ = type(cls.__name__, (cls,),
                               {"forward": _routed_forward(cls.forward, num_models)})
    return converted


def tie_embeddings(models: Sequence[nn.Module], converted: nn.Module) -> None:
    """Share the stacked vocabulary between input and output embeddings when every model
    ties them (Llama with ``tie_word_embeddings``, GPT-2): one [M, V, D] copy, not two."""
    try:
        tied = all(m.get_output_embeddings() is not None and
                   m.get_output_embeddings().weight is m.get_input_embeddings().weight
                   for m in models)
        out, inp = converted.get_output_embeddings(), converted.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return
    if tied and isinstance(out, DaWinLinear) and out.weight.shape == inp.weight.shape:
        out.weight = inp.weight


class DaWinCausalLM(nn.Module):
    """What ``dawinize`` returns for Hugging Face causal LMs.

    * ``merged(input_ids, coeffs, attention_mask=...)``: the model's usual output (e.g.
      ``CausalLMOutputWithPast``) with sequence b run through the interpolation
      ``sum_i coeffs[b, i] theta_i``;
    * ``merged.generate(input_ids, attention_mask=..., coeffs=rows, **generate_kwargs)``:
      the model's own ``generate``, every sequence decoded by its own interpolation.

    ``coeffs``: [B, M] (one row per sequence; any real values) or one row [M] for all.
    ``module`` is the converted Hugging Face model (its config, generation config and
    methods are model 0's).
    """

    def __init__(self, module: nn.Module, num_models: int) -> None:
        super().__init__()
        self.module = module
        self.num_models = num_models

    @property
    def config(self) -> Any:
        return self.module.config

    def _rows(self, coeffs: Any, batch: int, device: torch.device) -> torch.Tensor | SharedRow:
        if coeffs is None:
            raise ValueError("coeffs is required: rows [B, M] or one row [M]")
        coeffs = torch.as_tensor(coeffs, dtype=torch.float32, device=device) \
            if not isinstance(coeffs, torch.Tensor) else coeffs.to(device)
        if not coeffs.is_floating_point():
            raise TypeError("coeffs must be a floating-point tensor [B, M] or [M]")
        if coeffs.dim() == 1 or (coeffs.dim() == 2 and coeffs.shape[0] == 1 and batch != 1):
            sequence_routing(SharedRow(coeffs), batch, self.num_models)  # checks the row
            return SharedRow(coeffs.reshape(-1))
        sequence_routing(coeffs, batch, self.num_models)  # shape and values, once
        return coeffs

    @staticmethod
    def _batch(input_ids: torch.Tensor | None, kwargs: dict) -> tuple[int, torch.device]:
        inputs = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if not isinstance(inputs, torch.Tensor):
            raise ValueError("input_ids (or inputs_embeds) must be a tensor [B, L]")
        return inputs.shape[0], inputs.device

    def forward(self, input_ids: torch.Tensor | None = None, coeffs: Any = None,
                attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The model's forward with sequence b under row ``coeffs[b]`` (or one row)."""
        batch, device = self._batch(input_ids, kwargs)
        return self.module(input_ids=input_ids, attention_mask=attention_mask,
                           dawin_coeffs=self._rows(coeffs, batch, device), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, coeffs: Any = None,
                 **generate_kwargs: Any) -> Any:
        """The model's ``generate``, sequence b decoded under row ``coeffs[b]``.

        Rows are expanded with the sequences (``num_beams``, ``num_return_sequences``);
        every decode step runs one group per sequence.
        """
        batch, device = self._batch(input_ids, generate_kwargs)
        return self.module.generate(input_ids=input_ids, attention_mask=attention_mask,
                                    dawin_coeffs=self._rows(coeffs, batch, device),
                                    **generate_kwargs)


__all__ = [
    "DaWinCausalLM",
    "DaWinRMSNorm",
    "DaWinScaledEmbedding",
    "SharedRow",
    "conv1d_linear",
    "is_conv1d",
    "is_hf_causal_lm",
    "is_rms_norm",
    "is_scaled_embedding",
    "make_routed",
    "sequence_routing",
    "tie_embeddings",
]
