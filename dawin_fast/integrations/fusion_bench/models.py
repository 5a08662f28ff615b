"""Fused versions of FusionBench's dynamic-merging modules, and the helpers they share.

FusionBench's WEMoE (``fusion_bench.models.we_moe.WeightEnsemblingMoE``, its sparse
variants) and DAWE merge a state dict per sample in a Python loop and call
``functional_call`` on each sample. Here the same merges run as one fused forward
(``dawin_fast.dawinize`` over ``[base, tau_1, ..., tau_T]`` with rows
``[1, w_1, ..., w_T]``): no merged weight is ever built, and gradients reach the gates.

FusionBench 0.2.33 behaviours worked around here (their code is left alone):

* ``task_arithmetic_merge`` raises ``TypeError`` on any module with parameters (it adds
  plain tensors to the ``Parameter`` state dict of ``keep_vars=True``):
  ``task_arithmetic`` below merges instead.
* With transformers 5 a ``CLIPVisionModel`` has no ``.vision_model`` (the encoder is an
  attribute of the model itself): ``vision_transformer`` accepts both layouts.
* WEMoE's ``run`` sets ``batch_reduce=False`` on the returned top-level model only, so
  its MoE layers keep averaging the gate over the batch at evaluation (a sample's output
  depends on its batch). ``set_batch_reduce`` sets it on every fused MoE layer; our
  algorithms evaluate per sample (``eval_batch_reduce: false``), as the WEMoE paper does.
* DAWE task-wise (``DataAdaptiveWeightEnsemblingModel.compute_task_vectors``) passes the
  coding tensor to ``state_dict_weighted_sum``, which requires a list: every forward
  raises ``TypeError``. ``FusedDAWEModel`` computes the task-wise merge itself.
* ``WeightEnsemblingMoEAlgorithm`` creates its Lightning Fabric only when CUDA is
  available, and its test-time adaptation calls ``self._fabric.backward``: on a CPU it
  fails with ``AttributeError``. Our algorithms use the mixin's Fabric, on any device.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...nn.convert import DaWinModel, dawinize

_WEMOE_CLASSES = ("WeightEnsemblingMoE", "SparseWeightEnsemblingMoE",
                  "SparseWeightEnsemblingMoE_ShardGate")


@torch.no_grad()
def task_arithmetic(pretrained: nn.Module, finetuned: Sequence[nn.Module],
                    scaling_factor: float) -> nn.Module:
    """pretrained + s * sum_t (finetuned_t - pretrained), in place on ``pretrained``.

    What FusionBench's ``task_arithmetic_merge`` computes, without its ``TypeError`` on
    modules with parameters. Floating-point parameters and buffers are merged.
    """
    base = {k: v.clone() for k, v in pretrained.state_dict().items()}
    states = [m.state_dict() for m in finetuned]
    merged = {}
    for name, value in base.items():
        if not value.is_floating_point():
            merged[name] = value
            continue
        delta = sum(state[name].to(value.dtype) - value for state in states)
        merged[name] = value + scaling_factor * delta
    pretrained.load_state_dict(merged)
    return pretrained


def vision_transformer(model: nn.Module) -> nn.Module:
    """The module holding ``embeddings``/``encoder`` of a Hugging Face CLIP vision model:
    ``model.vision_model`` (transformers 4, ``CLIPModel``) or the model itself
    (transformers 5's ``CLIPVisionModel``)."""
    inner = getattr(model, "vision_model", model)
    if not hasattr(inner, "encoder"):
        raise TypeError(f"{type(model).__name__} is not a Hugging Face CLIP vision model "
                        f"(no .encoder or .vision_model.encoder)")
    return inner


def _task_vector_modules(base: nn.Module, task_vectors: Sequence[nn.Module]) -> list[nn.Module]:
    """Full modules of base's architecture holding each task vector (zeros where FusionBench
    deleted a frozen parameter), so that ``dawinize`` can stack [base, tau_1, ...]."""
    out = []
    base_state = base.state_dict()
    base_params = {name for name, _ in base.named_parameters()}
    for tv in task_vectors:
        params = dict(tv.named_parameters())
        state = {}
        for name, value in base_state.items():
            if name in params:
                state[name] = params[name].detach().to(value.dtype)
            elif value.is_floating_point() and name in base_params:
                state[name] = torch.zeros_like(value)  # not merged by FusionBench
            else:
                state[name] = value  # buffers: the base model's, shared
        module = copy.deepcopy(base)
        module.load_state_dict(state)
        out.append(module.requires_grad_(False))
    return out


def _rows(weights: torch.Tensor) -> torch.Tensor:
    """[w_1..w_T] -> [1, w_1..w_T] (one row [T] or per sample [B, T])."""
    ones = torch.ones(*weights.shape[:-1], 1, dtype=weights.dtype, device=weights.device)
    return torch.cat([ones, weights], dim=-1)


class FusedWeightEnsemblingMoE(nn.Module):
    """FusionBench's ``WeightEnsemblingMoE`` (and sparse variants), fused.

    Built from FusionBench's own module (``from_fusion_bench``), keeping its ``gate`` (the
    same parameters, so optimizers and checkpoints carry over). The forward computes the
    same gate weights (mean over tokens; ``batch_reduce``: also over the batch; a depth-0
    gate: one row for every sample) and runs ``base + sum_t w_t tau_t`` per sample as one
    fused forward. ``batch_first=False`` inputs [L, B, D] are handled like FusionBench.
    """

    def __init__(self, gate: nn.Module, merged: DaWinModel, batch_first: bool,
                 batch_reduce: bool, positional_encoding: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.merged = merged
        self.batch_first = batch_first
        self.batch_reduce = batch_reduce
        self.num_experts = merged.num_models - 1
        if positional_encoding is not None:
            self.register_buffer("layer_positional_encoding", positional_encoding,
                                 persistent=False)
        else:
            self.layer_positional_encoding = None

    @classmethod
    def from_fusion_bench(cls, module: nn.Module) -> FusedWeightEnsemblingMoE:
        """Convert a FusionBench WEMoE module (dense, sparse or shared-gate)."""
        if type(module).__name__ not in _WEMOE_CLASSES:
            raise TypeError(f"from_fusion_bench: expected one of {_WEMOE_CLASSES}, got "
                            f"{type(module).__name__}")
        vectors = _task_vector_modules(module.base_model, list(module.task_vectors))
        merged = dawinize([module.base_model, *vectors])
        encoding = None
        if getattr(module, "position_encoding", False):
            encoding = module.layer_positional_encoding.detach().clone()
        return cls(module.gate, merged, module.batch_first, module.batch_reduce, encoding)

    def gate_weights(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[T] (depth-0 gate) or [B, T]: the gate's mean over tokens, as FusionBench."""
        if self.gate.num_hidden_layers == 0:
            return self.gate()
        gate_input = hidden_states
        if self.layer_positional_encoding is not None:  # shared gate, position-aware
            enc = self.layer_positional_encoding.to(hidden_states.device)
            enc = enc.expand(*hidden_states.shape[:2], enc.shape[-1])
            gate_input = torch.cat([enc, hidden_states], dim=-1)
        return self.gate(gate_input).mean(dim=1 if self.batch_first else 0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weights = self.gate_weights(hidden_states)
        if weights.dim() == 2 and self.batch_reduce:
            weights = weights.mean(dim=0)
        batch_first = hidden_states if self.batch_first else hidden_states.transpose(0, 1)
        out = self.merged(batch_first, _rows(weights))
        return out if self.batch_first else out.transpose(0, 1)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, batch_first={self.batch_first}, "
                f"batch_reduce={self.batch_reduce}")


def fuse_we_moe(model: nn.Module) -> nn.Module:
    """Replace every FusionBench WEMoE module inside ``model`` by its fused version, in
    place (``model`` itself too). Returns the model."""
    if type(model).__name__ in _WEMOE_CLASSES:
        return FusedWeightEnsemblingMoE.from_fusion_bench(model)
    for name, child in list(model.named_children()):
        setattr(model, name, fuse_we_moe(child))
    return model


def set_batch_reduce(model: nn.Module, batch_reduce: bool) -> int:
    """Set ``batch_reduce`` on every (fused or FusionBench) MoE layer of ``model``, which
    FusionBench's WEMoE ``run`` misses. Returns how many layers were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, FusedWeightEnsemblingMoE) or \
                type(module).__name__ in _WEMOE_CLASSES or \
                isinstance(module, FusedDAWEModel):
            module.batch_reduce = batch_reduce
            count += 1
    return count


class FusedDAWEModel(nn.Module):
    """DAWE (data-adaptive weight ensembling), task-wise, fused.

    A frozen feature extractor maps the images to features, the gate maps them to
    per-sample codings [B, T], and the whole model ``base + sum_t c_t tau_t`` runs per
    sample in one fused forward (FusionBench's ``DataAdaptiveWeightEnsemblingModel`` merges
    a state dict per sample). ``forward(pixel_values)`` returns the base model's output
    (a ``CLIPVisionModel``'s ``BaseModelOutputWithPooling``), samples in caller order.
    """

    def __init__(self, gate: nn.Module, merged: DaWinModel, feature_extractor: nn.Module,
                 batch_reduce: bool = False) -> None:
        super().__init__()
        self.gate = gate
        self.merged = merged
        self.feature_extractor = feature_extractor.requires_grad_(False)
        self.batch_reduce = batch_reduce
        self.num_experts = merged.num_models - 1

    @classmethod
    def build(cls, base: nn.Module, experts: Sequence[nn.Module], feature_extractor: nn.Module,
              hidden_size: int, init_lambda: float = 0.3, gate_hidden_layers: int = 1,
              batch_reduce: bool = False) -> FusedDAWEModel:
        """From the pretrained model and the fine-tuned ones (task vectors are taken here);
        the gate is FusionBench's ``construct_dawe_gate`` (same init)."""
        from fusion_bench.method.dawe.warppers.dawe_model import construct_dawe_gate

        base = base.requires_grad_(False)
        vectors = _task_vector_modules(base, [_difference(e, base) for e in experts])
        gate = construct_dawe_gate(hidden_size, len(experts), init_lambda, gate_hidden_layers)
        return cls(gate, dawinize([base, *vectors]), feature_extractor, batch_reduce)

    def codings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(pixel_values)
        features = getattr(features, "pooler_output", features)
        return self.gate(features)

    def forward(self, pixel_values: torch.Tensor) -> Any:
        codings = self.codings(pixel_values)
        if codings.dim() == 2 and self.batch_reduce:
            codings = codings.mean(dim=0)
        return self.merged(pixel_values, _rows(codings))


@torch.no_grad()
def _difference(model: nn.Module, base: nn.Module) -> nn.Module:
    """A copy of ``model`` whose floating-point parameters are model - base."""
    out = copy.deepcopy(model).requires_grad_(False)
    base_params = dict(base.named_parameters())
    for name, param in out.named_parameters():
        param.sub_(base_params[name])
    return out


__all__ = ["FusedDAWEModel", "FusedWeightEnsemblingMoE", "fuse_we_moe", "set_batch_reduce",
           "task_arithmetic", "vision_transformer"]
