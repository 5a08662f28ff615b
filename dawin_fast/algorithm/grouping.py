"""Group the samples of a batch by their interpolation coefficients.

The fused kernels take rows sorted by group, a coefficient table ``coeffs`` [G, M] and
``offsets`` [G+1]. A ``Grouping`` holds that layout for one batch: sort the batch once at
the input (``permute``), run the model with ``coeffs`` and ``offsets`` (``token_offsets``
for [B*L] token rows), and restore the caller's order at the end (``unpermute``).

Everything is torch, on the device of the inputs, without Python loops over samples.

Gradients: a Grouping's ``coeffs`` keep the autograd graph of the rows they came from
(``group_per_sample``, ``group_by_labels``, ``single_group``), and ``permute``/``unpermute``
are index operations, so gradients flow through the sort and the unsort to the
coefficients. ``group_by_rows`` merges identical rows with ``torch.unique``, which has no
gradient: use ``group_per_sample`` when the rows require grad (a merged row's gradient
would be the sum over its samples, not each sample's own).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Grouping", "group_by_labels", "group_by_rows", "group_per_sample", "single_group",
           "two_model_rows"]


@dataclass(frozen=True, eq=False)
class Grouping:
    """A batch's samples sorted by group, with the groups' coefficient rows.

    Attributes
    ----------
    order : Tensor [B] int64
        Sample indices sorted by group (stable: caller order within a group).
    inverse : Tensor [B] int64
        Inverse permutation: ``x[order][inverse] == x``.
    offsets : Tensor [G+1] int64
        ``offsets[0] = 0``, ``offsets[-1] = B``; group g is ``order[offsets[g]:offsets[g+1]]``.
    coeffs : Tensor [G, M] float32
        Coefficient row of each group.
    labels : Tensor [B] int64
        Group of each sample, in caller order.
    """

    order: torch.Tensor
    inverse: torch.Tensor
    offsets: torch.Tensor
    coeffs: torch.Tensor
    labels: torch.Tensor

    @property
    def num_groups(self) -> int:
        """G, the number of coefficient rows (groups may be empty)."""
        return self.coeffs.shape[0]

    @property
    def num_samples(self) -> int:
        """B, the batch size."""
        return self.order.shape[0]

    def _index(self, x: torch.Tensor, index: torch.Tensor, what: str) -> torch.Tensor:
        if x.dim() < 1 or x.shape[0] != self.num_samples:
            raise ValueError(
                f"Grouping.{what}: expected {self.num_samples} samples along dim 0, "
                f"got shape {tuple(x.shape)}"
            )
        return x.index_select(0, index.to(x.device))

    def permute(self, x: torch.Tensor) -> torch.Tensor:
        """``x[order]``: the batch sorted by group (dim 0 is the sample dimension)."""
        return self._index(x, self.order, "permute")

    def unpermute(self, y: torch.Tensor) -> torch.Tensor:
        """``y[inverse]``: a sorted batch back in the caller's order."""
        return self._index(y, self.inverse, "unpermute")

    def token_offsets(self, tokens_per_sample: int) -> torch.Tensor:
        """Offsets over [B*L] rows when every sample has L contiguous token rows."""
        if (
            isinstance(tokens_per_sample, bool)
            or not isinstance(tokens_per_sample, int)
            or (tokens_per_sample < 0)
        ):
            raise ValueError(
                f"Grouping.token_offsets: tokens_per_sample must be an int >= 0, "
                f"got {tokens_per_sample!r}"
            )
        return self.offsets * tokens_per_sample


def _as_tensor(x, device: torch.device | None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x).to(device or "cpu")
    return x


def _from_labels(labels: torch.Tensor, coeffs: torch.Tensor) -> Grouping:
    """The Grouping for labels [B] in [0, G) and coeffs [G, M] (same device, validated)."""
    num_groups = coeffs.shape[0]
    labels = labels.long()
    order = torch.argsort(labels, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    counts = torch.bincount(labels, minlength=num_groups)
    zero = torch.zeros(1, dtype=torch.int64, device=labels.device)
    offsets = torch.cat([zero, torch.cumsum(counts, dim=0)])
    return Grouping(order, inverse, offsets, coeffs.float().contiguous(), labels)


def _check_coeffs(coeffs: torch.Tensor, fn: str, name: str) -> None:
    if not isinstance(coeffs, torch.Tensor) or not coeffs.is_floating_point():
        raise ValueError(f"{fn}: {name} must be a floating-point tensor")
    if coeffs.dim() != 2 or coeffs.shape[1] < 1:
        raise ValueError(f"{fn}: {name} must be [*, M] with M >= 1, got {tuple(coeffs.shape)}")
    if not bool(torch.isfinite(coeffs).all()):
        raise ValueError(f"{fn}: {name} contain NaN or infinity")


def group_by_rows(coeff_rows: torch.Tensor) -> Grouping:
    """Per-sample mode: samples with identical coefficient rows share a group.

    Rows are compared after conversion to float32 (the kernels' coefficient dtype). Groups
    are the distinct rows in ``torch.unique`` order (lexicographic), not in order of first
    appearance, so equal sets of rows give equal groupings.

    Parameters
    ----------
    coeff_rows : Tensor [B, M]
        Finite floating-point coefficients of each sample (e.g. ``two_model_rows(lam)`` or
        the rows of ``coefficients_multi``).

    Returns
    -------
    Grouping
        G = number of distinct rows (0 for an empty batch, with offsets = [0]).
    """
    fn = "group_by_rows"
    coeff_rows = _as_tensor(coeff_rows, None)
    _check_coeffs(coeff_rows, fn, "coeff_rows")
    rows = coeff_rows.float()
    unique, labels = torch.unique(rows, dim=0, return_inverse=True)
    return _from_labels(labels.reshape(-1), unique)


def group_per_sample(coeff_rows: torch.Tensor) -> Grouping:
    """Every sample its own group, in caller order, rows kept as they are (no dedup).

    The grouping for per-sample rows that require grad (trained gates, test-time
    adaptation): ``coeffs`` is ``coeff_rows`` in float32 with its autograd graph, so the
    gradient of group b is exactly sample b's own. The order is the identity.

    Parameters
    ----------
    coeff_rows : Tensor [B, M]
        Finite floating-point coefficients of each sample.

    Returns
    -------
    Grouping
        G = B, offsets = [0, 1, ..., B], identity order.
    """
    fn = "group_per_sample"
    coeff_rows = _as_tensor(coeff_rows, None)
    _check_coeffs(coeff_rows, fn, "coeff_rows")
    identity = torch.arange(coeff_rows.shape[0], device=coeff_rows.device)
    return Grouping(
        order=identity,
        inverse=identity.clone(),
        offsets=torch.arange(coeff_rows.shape[0] + 1, device=coeff_rows.device),
        coeffs=coeff_rows.float(),
        labels=identity.clone(),
    )


def group_by_labels(labels: torch.Tensor, component_coeffs: torch.Tensor) -> Grouping:
    """Mixture mode: sample b uses the coefficient row of its component ``labels[b]``.

    Parameters
    ----------
    labels : Tensor [B] integer
        Component of each sample, in [0, G) (e.g. ``BetaMixture.predict``); numpy arrays
        are accepted and moved to the device of the other argument.
    component_coeffs : Tensor [G, M] floating point
        Coefficient row of each component (e.g. ``two_model_rows(means_)``). All G rows
        are kept, empty groups included, so ``offsets`` has G + 1 entries.

    Returns
    -------
    Grouping
    """
    fn = "group_by_labels"
    device = next(
        (t.device for t in (labels, component_coeffs) if isinstance(t, torch.Tensor)), None
    )
    labels = _as_tensor(labels, device)
    component_coeffs = _as_tensor(component_coeffs, device)
    _check_coeffs(component_coeffs, fn, "component_coeffs")
    if component_coeffs.shape[0] < 1:
        raise ValueError(f"{fn}: component_coeffs needs at least one row")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        raise ValueError(f"{fn}: labels must be an integer tensor")
    if labels.dim() != 1:
        raise ValueError(f"{fn}: labels must be [B], got {tuple(labels.shape)}")
    if labels.device != component_coeffs.device:
        raise ValueError(
            f"{fn}: labels on {labels.device}, component_coeffs on {component_coeffs.device}"
        )
    num_groups = component_coeffs.shape[0]
    if labels.numel() and not bool(((labels >= 0) & (labels < num_groups)).all()):
        raise ValueError(f"{fn}: labels must be in [0, {num_groups})")
    return _from_labels(labels, component_coeffs)


def single_group(coeff_row: torch.Tensor, batch_size: int) -> Grouping:
    """Static interpolation (WiSE-FT, weight averaging, task arithmetic): one group.

    Parameters
    ----------
    coeff_row : Tensor [M]
        The coefficients of every sample.
    batch_size : int
        B >= 0.

    Returns
    -------
    Grouping
        Identity order, offsets = [0, B], coeffs [1, M].
    """
    fn = "single_group"
    coeff_row = _as_tensor(coeff_row, None)
    if not isinstance(coeff_row, torch.Tensor) or coeff_row.dim() != 1:
        raise ValueError(f"{fn}: coeff_row must be a 1-D tensor [M]")
    _check_coeffs(coeff_row.unsqueeze(0), fn, "coeff_row")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"{fn}: batch_size must be an int >= 0, got {batch_size!r}")
    device = coeff_row.device
    identity = torch.arange(batch_size, device=device)
    return Grouping(
        order=identity,
        inverse=identity.clone(),
        offsets=torch.tensor([0, batch_size], dtype=torch.int64, device=device),
        coeffs=coeff_row.float().unsqueeze(0).contiguous(),
        labels=torch.zeros(batch_size, dtype=torch.int64, device=device),
    )


def two_model_rows(lam: torch.Tensor) -> torch.Tensor:
    """Coefficient rows [1 - λ, λ] for two models (weights stacked as [θ_0, θ_1]).

    Parameters
    ----------
    lam : Tensor [B]
        Weights on model 1 (per sample, or per component: a mixture's ``means_``).

    Returns
    -------
    Tensor [B, 2] float32
    """
    lam = _as_tensor(lam, None)
    if not isinstance(lam, torch.Tensor) or not lam.is_floating_point() or lam.dim() != 1:
        raise ValueError("two_model_rows: lam must be a 1-D floating-point tensor [B]")
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("two_model_rows: lam contains NaN or infinity")
    return torch.stack([1 - lam, lam], dim=1).float()
