"""Run a batch through an interpolated model: group, sort, route, unsort.

``GroupedModel`` is the base of every DaWin model (``DaWinViT``, ``DaWinClassifier``, the
modules ``dawinize`` returns). Its ``forward(x, coeffs, cluster_labels=None)`` accepts:

* ``coeffs`` [M] or [1, M]: one row for the whole batch (static interpolation, WiSE-FT);
* ``coeffs`` [B, M]: a row per sample (exact per-sample DaWin); samples with identical rows
  share a group;
* ``coeffs`` [G, M] with ``cluster_labels`` [B]: mixture clusters; sample b uses row
  cluster_labels[b]. ``DaWinViT`` and ``DaWinClassifier`` also take them as ``labels``
  (their inputs have no labels of their own); ``dawinize``'s models pass ``labels`` to the
  wrapped model, where Hugging Face models take the loss targets.

``layer_coeffs={layer name: spec}`` gives layers their own coefficients (see
``dawin_fast.nn.routing``): a spec laid out like ``coeffs`` ([M], [B, M], or [G, M] with
labels) or a gate ``gate(x) -> [B, M]`` asked with the layer's input.

The batch is sorted by group once at the input, every layer reads the routing, and the
outputs come back in the caller's order.

Gradients: when per-sample rows require grad (and grad mode is on) or a layer has its
own per-sample rows, every sample is its own group in caller order (``group_per_sample``)
instead of merging identical rows, so sample b's rows receive exactly sample b's gradient.
Sorting by labels and the unsort are index operations: gradients flow through them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..algorithm.grouping import Grouping, group_by_labels, group_by_rows, group_per_sample
from .routing import LayerSpec, Routing, check_layer_names, check_not_tracing, route


def make_grouping(coeffs: torch.Tensor, labels: torch.Tensor | None, batch: int,
                  num_models: int, keep_rows: bool = False) -> Grouping | None:
    """The grouping for a call, or None for one row for the whole batch.

    ``keep_rows``: one group per sample, rows kept with their autograd graph (no merging of
    identical rows); a single row is then repeated for every sample.
    """
    if not isinstance(coeffs, torch.Tensor) or not coeffs.is_floating_point():
        raise TypeError("coeffs must be a floating-point tensor")
    if coeffs.shape[-1] != num_models or coeffs.dim() not in (1, 2):
        raise ValueError(f"coeffs must be [M], [B, M] or [G, M] with M={num_models}, "
                         f"got {tuple(coeffs.shape)}")
    if labels is not None:
        if coeffs.dim() != 2:
            raise ValueError("with cluster_labels, coeffs must be the [G, M] table of cluster "
                             "rows")
        if labels.shape != (batch,):
            raise ValueError(f"cluster_labels must be [B]=[{batch}], got "
                             f"{tuple(labels.shape)}")
        return group_by_labels(labels.to(coeffs.device), coeffs)
    if coeffs.dim() == 1 or coeffs.shape[0] == 1:
        if not keep_rows:
            return None
        return group_per_sample(coeffs.reshape(1, -1).expand(batch, -1))
    if coeffs.shape[0] != batch:
        raise ValueError(f"coeffs has {coeffs.shape[0]} rows for a batch of {batch}: pass one "
                         f"row per sample, one row for all, or [G, M] rows with cluster_labels")
    return group_per_sample(coeffs) if keep_rows else group_by_rows(coeffs)


def _needs_rows(coeffs: torch.Tensor, labels: torch.Tensor | None,
                layer_coeffs: Mapping[str, LayerSpec] | None, batch: int) -> bool:
    """Whether the batch must run one group per sample: per-sample rows that require grad
    (merging identical rows would pool their gradients), or per-sample layer tables."""
    if labels is not None or batch <= 1:
        return False
    tables = [t for t in (layer_coeffs or {}).values() if isinstance(t, torch.Tensor)]
    if any(t.dim() == 2 and t.shape[0] == batch for t in tables):
        return True
    return (torch.is_grad_enabled() and coeffs.requires_grad and coeffs.dim() == 2
            and coeffs.shape[0] == batch)


def cluster_labels_of(cluster_labels: torch.Tensor | None, labels: torch.Tensor | None,
                      who: str) -> torch.Tensor | None:
    if labels is not None and cluster_labels is not None:
        raise TypeError(f"{who}: pass cluster_labels or labels (the same thing), not both")
    return cluster_labels if cluster_labels is not None else labels


def as_coeffs(coeffs: Any, device: torch.device, who: str) -> torch.Tensor:
    """``coeffs`` as a tensor on ``device``; a missing one is a clear error naming ``who``."""
    if coeffs is None:
        raise TypeError(f"{who}: coeffs is required: model(x, coeffs) with one row [M], rows "
                        f"[B, M], or a [G, M] table and cluster_labels [B]")
    if not isinstance(coeffs, torch.Tensor):
        return torch.as_tensor(coeffs, dtype=torch.float32, device=device)
    return coeffs.to(device)


def _map_batch(out: Any, fn) -> Any:
    """Apply fn to every tensor of an output (tensors, tuples, namedtuples, lists, dicts
    and dict subclasses such as Hugging Face's ModelOutput), keeping container types."""
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(_map_batch(o, fn) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_map_batch(o, fn) for o in out)
    if isinstance(out, dict):
        mapped = {k: _map_batch(v, fn) for k, v in out.items()}
        try:
            return type(out)(**mapped)
        except TypeError:  # non-string keys, or a constructor of another shape
            return mapped
    return out


class GroupedModel(nn.Module):
    """Base class: subclasses implement ``forward_routed(x, **kwargs)`` for a sorted batch."""

    num_models: int

    def forward(self, x: torch.Tensor, coeffs: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                layer_coeffs: Mapping[str, LayerSpec] | None = None,
                cluster_labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Run ``x`` [B, ...] with per-sample, per-cluster or whole-batch coefficients.

        ``cluster_labels`` (or ``labels``) [B]: sample b uses row ``coeffs[labels[b]]``.
        ``layer_coeffs``: per-layer coefficients by layer name, laid out like ``coeffs``,
        or gates (see the module docstring).
        """
        who = type(self).__name__
        coeffs = as_coeffs(coeffs, x.device, who)
        labels = cluster_labels_of(cluster_labels, labels, who)

        def run(permute: Callable[[Any], Any] | None) -> Any:
            return self.forward_routed(x if permute is None else permute(x), **kwargs)

        return self.run_grouped(run, coeffs, labels, layer_coeffs, x.shape[0], x.device,
                                _map_batch)

    def run_grouped(self, run: Callable[[Callable[[Any], Any] | None], Any],
                    coeffs: torch.Tensor, labels: torch.Tensor | None,
                    layer_coeffs: Mapping[str, LayerSpec] | None, batch: int,
                    device: torch.device, unpermute_output: Callable[[Any, Any], Any]) -> Any:
        """Group a batch of ``batch`` samples by coefficient row and run it routed.

        ``run(permute)`` runs the model on inputs sorted with ``permute`` (None: unsorted);
        ``unpermute_output(out, grouping.unpermute)`` puts the outputs back in caller order.
        """
        check_not_tracing(type(self).__name__)
        if torch.compiler.is_compiling():  # grouping reads coefficient values on the host
            raise RuntimeError(f"{type(self).__name__}: torch.compile of the whole model cannot "
                               f"group the batch by coefficient values; compile its module "
                               f"(merged.module for dawinize) and call it under "
                               f"dawin_fast.route(rows)")
        if layer_coeffs:
            check_layer_names(layer_coeffs, self.layer_names(),
                              f"{type(self).__name__} layer_coeffs")
        keep_rows = _needs_rows(coeffs, labels, layer_coeffs, batch)
        grouping = make_grouping(coeffs, labels, batch, self.num_models, keep_rows)
        if batch == 0:  # nothing to group; any row runs the empty batch
            with route(torch.zeros(self.num_models, device=device)):
                return run(None)
        routing = (Routing(coeffs.reshape(1, -1), layers=layer_coeffs) if grouping is None
                   else Routing(grouping.coeffs, grouping.offsets, layer_coeffs))
        routing.names_checked = True  # above, against every layer (not only those that ran)
        if grouping is None:
            with route(routing):
                return run(None)
        self.check_per_sample()
        with route(routing):
            out = run(grouping.permute)
        return unpermute_output(out, grouping.unpermute)

    def check_per_sample(self) -> None:
        """Raise before any work if this model cannot run more than one row per batch."""

    def layer_names(self) -> list[str]:
        """The names ``layer_coeffs`` may use: every named dawin_fast layer's."""
        return [m.routing_name for m in self.modules()
                if isinstance(getattr(m, "routing_name", None), str)]

    def forward_routed(self, x: torch.Tensor, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError
