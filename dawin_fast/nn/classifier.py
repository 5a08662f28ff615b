"""``DaWinClassifier``: an interpolating encoder followed by M interpolated heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .grouped import GroupedModel
from .linear import DaWinLinear


class DaWinClassifier(GroupedModel):
    """Encoder features -> (optionally L2-normalised) -> head, both interpolated.

    Each of the M models has its own head: a zero-shot head from text embeddings (a tensor
    [C, D], e.g. ``logit_scale * normalize(text_features)``) or a fine-tuned ``nn.Linear``.
    The heads are interpolated with the same coefficients as the encoder (DaWin merges every
    parameter, the classification head too), through the fused kernel.

    ``forward(images, coeffs, labels=None)`` returns logits [B, C] in the caller's order.
    """

    def __init__(self, encoder: GroupedModel, heads: Sequence[torch.Tensor | nn.Linear],
                 normalize: bool = True) -> None:
        super().__init__()
        heads = list(heads)
        if len(heads) != encoder.num_models:
            raise ValueError(f"DaWinClassifier: {len(heads)} heads for an encoder of "
                             f"{encoder.num_models} models")
        linears = [_as_linear(h, i) for i, h in enumerate(heads)]
        _check_head_shapes(linears, getattr(encoder, "output_dim", None))
        if any(lin.bias is not None for lin in linears):  # a head without bias has bias 0
            linears = [_with_bias(lin) for lin in linears]
        self.encoder = encoder
        self.head = DaWinLinear.from_linears(linears)
        self.head.routing_name = "head"  # the encoder's layers keep their own names
        self.normalize = normalize
        self.num_models = encoder.num_models

    def forward_routed(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder.forward_routed(x)
        if isinstance(features, tuple):  # (pooled, tokens)
            features = features[0]
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return self.head(features.to(self.head.weight.dtype))


def _as_linear(head: torch.Tensor | nn.Linear, index: int) -> nn.Linear:
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, torch.Tensor) and head.dim() == 2:
        linear = nn.Linear(head.shape[1], head.shape[0], bias=False,
                           device=head.device, dtype=head.dtype)
        with torch.no_grad():
            linear.weight.copy_(head)
        return linear
    raise TypeError(f"DaWinClassifier: head {index} must be an nn.Linear or a [C, D] tensor, "
                    f"got {type(head).__name__}")


def _check_head_shapes(linears: Sequence[nn.Linear], feature_dim: int | None) -> None:
    """Every head [C, D] with the same C, and D the encoder's feature size when it is known."""
    for i, lin in enumerate(linears):
        shape = list(lin.weight.shape)
        if feature_dim is not None and lin.in_features != feature_dim:
            raise ValueError(f"DaWinClassifier: head {i} is {shape}, but the encoder's features "
                             f"have {feature_dim} dims; expected [C, {feature_dim}]")
        if lin.weight.shape != linears[0].weight.shape:
            raise ValueError(f"DaWinClassifier: head {i} is {shape}, head 0 is "
                             f"{list(linears[0].weight.shape)}; every head must be the same [C, D]")


def _with_bias(linear: nn.Linear) -> nn.Linear:
    if linear.bias is not None:
        return linear
    out = nn.Linear(linear.in_features, linear.out_features, bias=True,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(linear.weight)
        out.bias.zero_()
    return out
