"""Routing: which interpolation coefficients each sample of a batch uses.

Layers replaced by dawin_fast (``DaWinLinear`` and friends) called without explicit
coefficients read the routing of the innermost active ``route(...)`` block. One routing
serves every layer of a forward pass: it is validated once, and each layer derives what
it needs from it (a layer that sees L rows per sample scales the sample offsets by L).

Rows must be sample-major: the rows of sample b are contiguous (batch-first tensors
``[B, ...]``). The samples of group g are ``offsets[g] .. offsets[g+1]-1``, so the caller
sorts the batch by group once at the input (see ``dawin_fast.algorithm.grouping``).

Example::

    with route(coeffs, offsets):   # coeffs [G, M], offsets [G+1] over samples
        y = model(x_sorted)

Per-layer coefficients (layer-wise AdaMerging, layer-wise DAWE, gates computed inside the
forward as WEMoE does): ``layers={name: spec}`` gives a layer its own coefficients. Names
are the module names of the original model (``model.named_modules()``; ``dawinize`` and
``DaWinViT`` name every layer they build, ``name_layers`` names any module tree), and an
entry applies to the layer of that name and to every layer below it (the longest matching
name wins: ``"encoder.layers.3"`` covers ``"encoder.layers.3.mlp.fc1"``). A spec is

* a table [G, M] (one row per group of the routing) or one row [M] for every sample;
* a callable ``gate(x) -> [B, M]`` (or [M]) asked with the layer's own input ``x``
  (batch-first [B, ...]): per-sample rows computed inside the forward.

A name that matches no layer raises, naming the closest real names: a model's
``forward(..., layer_coeffs=...)`` checks before running, ``route(..., layers=...)`` when its
block ends (against the layers that ran in it).

Every coefficient keeps its autograd graph: gradients flow from the layers' outputs to
the tables, to the gates' parameters, and to the rows the routing was built from.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import threading
from collections.abc import Callable, Iterator, Mapping

import torch

from ..ops import OneHot, check_coeff_values, check_values, skip_value_checks

_state = threading.local()

LayerSpec = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


class Routing:
    """Coefficient rows ``coeffs`` [G, M] for groups of samples given by ``offsets`` [G+1].

    Without ``offsets``, ``coeffs`` is one row ([M] or [1, M]) for every row of every layer
    (static interpolation). Values are checked once here (offsets start at 0 and never
    decrease; coeffs finite), so layers skip the per-call checks that would synchronise
    with the GPU. The same check finds whether every row is one-hot (expert passes, a
    single model): layers then pass ``one_hot_for(rows)`` on and run plain GEMMs.
    ``layers``: per-layer tables or gates (see the module docstring); a layer asks
    ``resolve(its name, its input)`` for the routing it uses.
    """

    def __init__(self, coeffs: torch.Tensor, offsets: torch.Tensor | None = None,
                 layers: Mapping[str, LayerSpec] | None = None) -> None:
        if not isinstance(coeffs, torch.Tensor) or not coeffs.is_floating_point():
            raise TypeError("route: coeffs must be a floating-point tensor")
        if coeffs.dim() == 1:
            coeffs = coeffs.unsqueeze(0)
        if coeffs.dim() != 2 or coeffs.shape[0] < 1:
            raise ValueError(f"route: coeffs must be [G, M] or [M], got {tuple(coeffs.shape)}")
        self.coeffs = coeffs.float()
        self.offsets = offsets
        self.num_samples: int | None = None
        if offsets is None:
            if coeffs.shape[0] != 1:
                raise ValueError("route: offsets are required when coeffs has more than one row")
            models = check_coeff_values(self.coeffs, who="route")
            self._one_hot = None if models is None else OneHot(models, (0, 1))
        else:
            if not isinstance(offsets, torch.Tensor) or offsets.dim() != 1:
                raise ValueError("route: offsets must be a 1-D integer tensor [G+1]")
            if offsets.numel() != coeffs.shape[0] + 1:
                raise ValueError(
                    f"route: offsets must be [G+1] = [{coeffs.shape[0] + 1}], "
                    f"got {tuple(offsets.shape)}"
                )
            if offsets.device != coeffs.device:
                raise ValueError(f"route: offsets on {offsets.device}, coeffs on {coeffs.device}")
            self.num_samples = int(offsets[-1])
            self._one_hot = check_values(self.num_samples, self.coeffs, offsets)
        # Index tensors derived per row count, cached: every layer of a forward shares them.
        self._offsets_cache: dict[int, torch.Tensor] = {}
        self._groups_cache: dict[int, torch.Tensor] = {}
        self.layers = self._check_layers(layers)
        self._match_cache: dict[str, str | None] = {}
        self._tables: dict[str, Routing] = {}
        #: set by whoever already checked ``layers`` against the model's layer names.
        self.names_checked = False

    def check_names_matched(self) -> None:
        """Raise if a ``layers`` name matched none of the layers that ran under this
        routing (nothing to check when none ran)."""
        if self.names_checked or not self.layers or not self._match_cache:
            return
        check_layer_names(self.layers, self._match_cache, "route(layers=...)",
                          "of the layers that ran under it")

    @classmethod
    def _derived(cls, coeffs: torch.Tensor, offsets: torch.Tensor | None,
                 num_samples: int | None, parent: Routing | None = None) -> Routing:
        """A routing from values already validated (no checks, no host sync)."""
        routing = cls.__new__(cls)
        routing.coeffs, routing.offsets, routing.num_samples = coeffs, offsets, num_samples
        same_groups = parent is not None and offsets is parent.offsets
        routing._offsets_cache = parent._offsets_cache if same_groups else {}
        routing._groups_cache = parent._groups_cache if same_groups else {}
        routing.layers, routing._match_cache, routing._tables = {}, {}, {}
        routing._one_hot = None  # not checked: per-layer tables and gates run fused
        routing.names_checked = True  # no layers of its own
        return routing

    def _check_layers(self, layers: Mapping[str, LayerSpec] | None) -> dict[str, LayerSpec]:
        checked: dict[str, LayerSpec] = {}
        for name, spec in (layers or {}).items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"route: layer names must be non-empty strings, got {name!r}")
            if not isinstance(spec, torch.Tensor):
                if not callable(spec):
                    raise TypeError(f"route: layer {name!r} needs a [G, M] / [M] tensor or a "
                                    f"callable gate(x) -> [B, M], got {type(spec).__name__}")
                checked[name] = spec
                continue
            table = spec.unsqueeze(0) if spec.dim() == 1 else spec
            groups, num_models = self.coeffs.shape
            if (not table.is_floating_point() or table.dim() != 2
                    or table.shape[1] != num_models or table.shape[0] not in (1, groups)):
                raise ValueError(f"route: layer {name!r} coefficients must be floating point "
                                 f"[G={groups}, M={num_models}] or one row [M], got "
                                 f"{spec.dtype} {tuple(spec.shape)}")
            if not bool(torch.isfinite(table).all()):
                raise ValueError(f"route: layer {name!r} coefficients contain NaN or infinity")
            checked[name] = table.float().to(self.coeffs.device)
        return checked

    def resolve(self, name: str | None, x: torch.Tensor | None = None) -> Routing:
        """The routing of layer ``name`` (its ``layers`` entry, else this one).

        ``x`` is the layer's input, which a gate is asked with.
        """
        if not self.layers or name is None:
            return self
        if name not in self._match_cache:
            keys = [k for k in self.layers if name == k or name.startswith(k + ".")]
            self._match_cache[name] = max(keys, key=len) if keys else None
        key = self._match_cache[name]
        if key is None:
            return self
        spec = self.layers[key]
        if isinstance(spec, torch.Tensor):
            if key not in self._tables:
                self._tables[key] = (Routing._derived(spec, None, None) if spec.shape[0] == 1
                                     else Routing._derived(spec, self.offsets, self.num_samples,
                                                           self))
            return self._tables[key]
        return self._gated(key, spec, x)

    def _gated(self, key: str, gate: Callable[[torch.Tensor], torch.Tensor],
               x: torch.Tensor | None) -> Routing:
        """Per-sample rows from a gate asked with the layer's input (batch-first)."""
        if x is None or x.dim() < 2:
            raise ValueError(f"route: the gate of layer {key!r} needs the layer's batch-first "
                             f"input [B, ...]; this layer has none")
        batch = self.num_samples if self.num_samples is not None else x.shape[0]
        rows = gate(x)
        if not isinstance(rows, torch.Tensor) or not rows.is_floating_point():
            raise TypeError(f"route: the gate of layer {key!r} must return a floating-point "
                            f"tensor [B, M]")
        rows = rows.float()
        if rows.dim() == 1 or (rows.dim() == 2 and rows.shape[0] == 1):
            if rows.shape[-1] == self.num_models:
                return Routing._derived(rows.reshape(1, -1), None, None)
        if rows.shape != (batch, self.num_models):
            raise ValueError(f"route: the gate of layer {key!r} returned {tuple(rows.shape)}, "
                             f"expected [B={batch}, M={self.num_models}] or [M]")
        offsets = torch.arange(batch + 1, device=rows.device)
        return Routing._derived(rows, offsets, batch)

    @property
    def one_hot(self) -> bool:
        """Whether every coefficient row is one-hot (each group runs one model alone)."""
        return self._one_hot is not None

    def one_hot_for(self, num_rows: int) -> OneHot | None:
        """The one-hot plan over ``num_rows`` sample-major rows (None unless one-hot)."""
        if self._one_hot is None:
            return None
        if self.offsets is None:
            return OneHot(self._one_hot.models, (0, num_rows))
        self.row_offsets_for(num_rows)  # the same row-count checks
        return self._one_hot.scaled(num_rows // max(self.num_samples, 1))

    @property
    def num_models(self) -> int:
        return self.coeffs.shape[1]

    def row_offsets(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """Offsets over the rows of ``x`` [..., K] (sample-major, batch-first), for the
        layer named ``layer`` (named in errors)."""
        if self.offsets is not None and x.dim() >= 3 and x.shape[0] != self.num_samples:
            where = f"layer {layer!r}" if layer else "a layer"
            raise ValueError(
                f"routing is for {self.num_samples} samples, but the input of {where} has "
                f"shape {tuple(x.shape)}: per-sample rows need every layer's input batch-first "
                f"[B, ...] (a model that regroups samples, e.g. into windows, runs with one "
                f"row [M] only)"
            )
        try:
            return self.row_offsets_for(math.prod(x.shape[:-1]))
        except ValueError as err:
            raise ValueError(f"layer {layer!r}: {err}" if layer else str(err)) from None

    def row_offsets_for(self, num_rows: int) -> torch.Tensor:
        """Offsets over ``num_rows`` sample-major rows (a multiple of the sample count)."""
        if num_rows not in self._offsets_cache:
            self._offsets_cache[num_rows] = self._make_row_offsets(num_rows)
        return self._offsets_cache[num_rows]

    def _make_row_offsets(self, num_rows: int) -> torch.Tensor:
        if self.offsets is None:
            return torch.tensor([0, num_rows], device=self.coeffs.device)
        if self.num_samples == 0:
            if num_rows:
                raise ValueError(f"routing is for 0 samples, but a layer sees {num_rows} rows")
            return self.offsets
        if num_rows % self.num_samples:
            raise ValueError(
                f"routing is for {self.num_samples} samples, but a layer sees {num_rows} rows "
                f"(not a multiple)"
            )
        return self.offsets * (num_rows // self.num_samples)

    def groups_of_rows(self, num_rows: int) -> torch.Tensor:
        """Group index [num_rows] of every sample-major row."""
        if num_rows not in self._groups_cache:
            offsets = self.row_offsets_for(num_rows)
            lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
            groups = torch.arange(lengths.numel(), device=offsets.device)
            self._groups_cache[num_rows] = torch.repeat_interleave(groups, lengths,
                                                                   output_size=num_rows)
        return self._groups_cache[num_rows]

    def interpolate(self, stacked: torch.Tensor) -> torch.Tensor:
        """Per-group interpolation [G, *S] of a stacked tensor [M, *S], in its dtype.

        Computed in float32; meant for small parameters (norms, embeddings, scales).
        """
        if stacked.shape[0] != self.num_models:
            raise ValueError(
                f"routing has {self.num_models} coefficients per row, but the stacked "
                f"tensor holds {stacked.shape[0]} models"
            )
        merged = self.coeffs.to(stacked.device) @ stacked.reshape(stacked.shape[0], -1).float()
        return merged.reshape(self.coeffs.shape[0], *stacked.shape[1:]).to(stacked.dtype)

    def for_input(self, table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Lay out per-group values ``table`` [G, *S] to broadcast against ``x``.

        ``x`` is batch-first [B, ..., *S] (result [B, 1, ..., *S]) or flattened sample-major
        rows [rows, *S] (result [rows, *S]). With one coefficient row for everything the
        result is simply ``table[0]``.
        """
        if self.offsets is None:
            return table[0]
        lead = x.shape[: x.dim() - (table.dim() - 1)]
        if len(lead) >= 1 and lead[0] == self.num_samples:
            per_sample = table[self.groups_of_rows(self.num_samples)]
            return per_sample.reshape(self.num_samples, *([1] * (len(lead) - 1)),
                                      *table.shape[1:])
        if len(lead) == 1:
            return table[self.groups_of_rows(lead[0])]
        raise ValueError(
            f"routing is for {self.num_samples} samples, but an input has shape "
            f"{tuple(x.shape)}: inputs must be batch-first [B, ...]"
        )


def _matches(key: str, name: str) -> bool:
    return name == key or name.startswith(key + ".")


def check_layer_names(keys, names, what: str, among: str = "of the model") -> None:
    """Raise a ValueError for the first of ``keys`` that is no layer name of ``names``
    and no prefix of one (a misspelling would otherwise be silently ignored), naming the
    closest real names."""
    names = sorted(set(names))
    for key in keys:
        if any(_matches(key, name) for name in names):
            continue
        candidates = sorted({".".join(parts[:i]) for parts in (n.split(".") for n in names)
                             for i in range(1, len(parts) + 1)})
        close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
        hint = (f"closest: {', '.join(repr(c) for c in close)}" if close else
                f"layer names look like {names[0]!r}" if names else "no layer has a name")
        raise ValueError(f"{what}: {key!r} matches no layer {among}; {hint}")


def current_routing() -> Routing | None:
    """The routing of the innermost active ``route`` block, or None."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


def check_not_tracing(who: str) -> None:
    """Refuse ``torch.jit.trace``: grouping and the one-hot shortcut read coefficient values
    on the host, which a trace would record as constants for every later call."""
    if torch.jit.is_tracing():
        raise RuntimeError(f"{who}: torch.jit.trace would bake in choices made from the "
                           f"coefficient values (grouping, one-hot shortcut); run it eagerly, "
                           f"or torch.compile the module under dawin_fast.route(...)")


def require_routing(layer: str) -> Routing:
    """The active routing, or a clear error naming the layer that needed it."""
    check_not_tracing(layer)
    routing = current_routing()
    if routing is None:
        raise RuntimeError(
            f"{layer} needs coefficients: call it inside "
            "`with dawin_fast.route(coeffs, offsets):` (DaWin models do this for you)"
        )
    return routing


@contextlib.contextmanager
def route(coeffs: torch.Tensor | Routing, offsets: torch.Tensor | None = None,
          layers: Mapping[str, LayerSpec] | None = None) -> Iterator[Routing]:
    """Make layers without explicit coefficients use ``coeffs`` (and ``offsets``) here.

    ``coeffs`` is [G, M] with ``offsets`` [G+1] over samples, or a single row [M] / [1, M]
    without offsets for the whole batch (static interpolation), or a ``Routing``.
    ``layers``: per-layer tables [G, M] / [M] or gates ``gate(x) -> [B, M]`` by layer name.
    """
    if isinstance(coeffs, Routing):
        if offsets is not None or layers is not None:
            raise ValueError("route: pass offsets and layers to the Routing, not beside it")
        routing = coeffs
    else:
        routing = Routing(coeffs, offsets, layers)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(routing)
    try:
        with skip_value_checks():
            yield routing
    finally:
        stack.pop()
    routing.check_names_matched()  # only when the block ran through


def name_layers(root: torch.nn.Module, prefix: str = "") -> torch.nn.Module:
    """Give every dawin_fast layer under ``root`` its module name as ``routing_name``.

    The names are ``root.named_modules()``'s (with ``prefix``), so per-layer coefficients
    use the names of the original model. The interpolated free tensors ``dawinize``
    stores as ``_dawin_<name>`` are named ``<name>``. Returns ``root``.
    """
    for name, module in root.named_modules(prefix=prefix):
        if hasattr(module, "routing_name"):
            parts = name.split(".")
            if parts[-1].startswith("_dawin_"):
                parts[-1] = parts[-1][len("_dawin_"):]
            module.routing_name = ".".join(parts)
    return root
