"""The input checks of ``interp_linear``.

Shapes, dtypes and devices always (``check_inputs``); the values (offsets start at 0,
never decrease and end at the row count; coeffs finite) with one host read
(``check_values``), once per unchanged coeffs/offsets pair (``_Validated``), or as asserts
inside the graph under ``torch.compile``. The same read says whether every coefficient
row is one-hot (``OneHot``). ``skip_value_checks`` turns the value checks off in a thread.
Imports torch only; ``dawin_fast.ops`` re-exports the public names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import weakref
from collections.abc import Iterator

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_state = threading.local()


def _value_checks_enabled() -> bool:
    return getattr(_state, "value_checks", True)


@contextlib.contextmanager
def skip_value_checks() -> Iterator[None]:
    """Skip the checks that read tensor *values* (offsets, finiteness of coeffs).

    Those checks synchronise with the GPU. Modules that validated their routing once
    (``dawin_fast.nn.Routing``) run their layers inside this context. Shape, dtype and
    device checks always run.
    """
    previous = _value_checks_enabled()
    _state.value_checks = False
    try:
        yield
    finally:
        _state.value_checks = previous


def check_inputs(
    x: torch.Tensor,
    weight: torch.Tensor,
    coeffs: torch.Tensor,
    offsets: torch.Tensor,
    bias: torch.Tensor | None,
) -> OneHot | None:
    """Raise a ``ValueError``/``TypeError`` naming the first violated rule of the contract.

    Shape, dtype and device rules always; value rules (offsets start at 0, never
    decrease, end at the row count; coeffs finite) unless ``skip_value_checks`` is active,
    the tensors are fake (tracing) or a CUDA graph is being captured; read once for the
    same unchanged coeffs and offsets tensors (``_Validated``). Under
    ``torch.compile`` the value rules become asserts inside the graph (no host sync, no
    graph break): the same messages, raised as ``RuntimeError`` when the graph runs (on a
    GPU as a device-side assert). Returns the eager value check's ``OneHot`` (None when
    the rows are not all one-hot, or when values were not checked on the host).
    """
    _check_metadata(x, weight, coeffs, offsets, bias)
    if not _value_checks_enabled() or _is_fake(x) or _is_capturing(x) or _is_meta(
            coeffs, offsets):
        return None
    if torch.compiler.is_compiling():
        _assert_values(math.prod(x.shape[:-1]), coeffs, offsets)
        return None
    return _validated.check(math.prod(x.shape[:-1]), coeffs, offsets)


def _check_metadata(x, weight, coeffs, offsets, bias) -> None:
    for name, t in (("x", x), ("weight", weight), ("coeffs", coeffs), ("offsets", offsets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"interp_linear: {name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(
            f"interp_linear: bias must be a torch.Tensor or None, got {type(bias).__name__}"
        )
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"interp_linear: x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("interp_linear: x must have at least 1 dimension [..., K]")
    if weight.dim() != 3:
        raise ValueError(
            f"interp_linear: weight must be [M, N, K] (stacked nn.Linear weights), "
            f"got shape {tuple(weight.shape)}"
        )
    num_models, out_features, in_features = weight.shape
    if num_models < 1:
        raise ValueError("interp_linear: weight must stack at least one model (M >= 1)")
    if weight.dtype != x.dtype:
        raise TypeError(f"interp_linear: weight dtype {weight.dtype} != x dtype {x.dtype}")
    if x.shape[-1] != in_features:
        raise ValueError(
            f"interp_linear: x has {x.shape[-1]} features, weight expects K={in_features}"
        )
    if bias is not None:
        if bias.shape != (num_models, out_features):
            raise ValueError(
                f"interp_linear: bias must be [M, N] = [{num_models}, {out_features}], "
                f"got {tuple(bias.shape)}"
            )
        if bias.dtype != x.dtype:
            raise TypeError(f"interp_linear: bias dtype {bias.dtype} != x dtype {x.dtype}")
    if coeffs.dim() != 2 or coeffs.shape[1] != num_models:
        raise ValueError(
            f"interp_linear: coeffs must be [G, M] with M={num_models}, got {tuple(coeffs.shape)}"
        )
    if not coeffs.is_floating_point():
        raise TypeError(f"interp_linear: coeffs must be floating point, got {coeffs.dtype}")
    if coeffs.shape[0] < 1:
        raise ValueError("interp_linear: coeffs must have at least one group (G >= 1)")
    if offsets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"interp_linear: offsets must be int32 or int64, got {offsets.dtype}")
    if offsets.dim() != 1 or offsets.numel() != coeffs.shape[0] + 1:
        raise ValueError(
            f"interp_linear: offsets must be [G+1] = [{coeffs.shape[0] + 1}] for "
            f"{coeffs.shape[0]} coefficient rows, got shape {tuple(offsets.shape)}"
        )
    tensors = {"weight": weight, "coeffs": coeffs, "offsets": offsets}
    if bias is not None:
        tensors["bias"] = bias
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"interp_linear: {name} is on {t.device}, x is on {x.device}")


@dataclasses.dataclass(frozen=True)
class OneHot:
    """Every coefficient row is one-hot: rows ``bounds[g] .. bounds[g+1]-1`` run model
    ``models[g]`` alone (host ints, known from a value check's one sync)."""

    models: tuple[int, ...]
    bounds: tuple[int, ...]

    def scaled(self, factor: int) -> OneHot:
        """The same groups over ``factor`` rows per sample (a layer's tokens)."""
        return OneHot(self.models, tuple(b * factor for b in self.bounds))

    def runs(self) -> list[tuple[int, int, int]]:
        """(model, first row, end row) of every non-empty group."""
        return [(model, self.bounds[g], self.bounds[g + 1])
                for g, model in enumerate(self.models) if self.bounds[g] < self.bounds[g + 1]]


def _coeff_summary(coeffs: torch.Tensor) -> torch.Tensor:
    """[2 + G] int64 on coeffs' device, no sync: finite, every row one-hot, then each row's
    argmax. A row is one-hot when one entry is exactly 1 and the others exactly 0."""
    ones = coeffs == 1
    one_hot = (ones | (coeffs == 0)).all() & (ones.sum(1) == 1).all()
    flags = torch.stack([torch.isfinite(coeffs).all(), one_hot]).to(torch.int64)
    return torch.cat([flags, ones.to(torch.int8).argmax(1).to(torch.int64)])


def check_coeff_values(coeffs: torch.Tensor, who: str = "interp_linear") -> tuple[int, ...] | None:
    """Raise if coeffs [G, M] are not all finite; return each row's model when every row is
    one-hot, else None. One host sync."""
    finite, one_hot, *models = _coeff_summary(coeffs).tolist()
    if not finite:
        raise ValueError(f"{who}: coeffs contain NaN or infinity")
    return tuple(models) if one_hot else None


def check_values(num_rows: int, coeffs: torch.Tensor, offsets: torch.Tensor) -> OneHot | None:
    """Check offsets (start at 0, non-decreasing, end at ``num_rows``) and finite coeffs.

    Returns a ``OneHot`` when every coefficient row is one-hot, else None; all of it from
    one host sync.
    """
    values = torch.cat([
        (offsets[1:] < offsets[:-1]).any().to(torch.int64).reshape(1),
        _coeff_summary(coeffs), offsets.to(torch.int64),
    ]).tolist()
    decreasing, finite, one_hot = values[:3]
    num_groups = coeffs.shape[0]
    models, bounds = values[3:3 + num_groups], values[3 + num_groups:]
    check_bounds(bounds, num_rows, decreasing=bool(decreasing))
    if not finite:
        raise ValueError("interp_linear: coeffs contain NaN or infinity")
    return OneHot(tuple(models), tuple(bounds)) if one_hot else None


class _Validated:
    """The coeffs/offsets pairs ``check_values`` passed, so that a model whose layers all
    get the same tensors reads them to the host once per forward, not once per layer.

    A pair is the same when both tensors are the same objects (or views of the same base
    tensors, held by weak reference: a new tensor at a freed one's id is not it) with the
    same data pointer, shape, strides and ``_version``: every in-place write to a tensor or
    its views bumps the version, so such a write re-validates. Writes that bypass the
    version counter (through ``.data``, NumPy or DLPack aliases) are not seen. Tensors
    without a version counter (inference mode) are checked every time.
    """

    SIZE = 32

    def __init__(self) -> None:
        self.entries: dict[tuple, tuple] = {}
        self.lock = threading.Lock()

    @staticmethod
    def _state(t: torch.Tensor) -> tuple[torch.Tensor, tuple] | None:
        try:
            version = t._version
        except RuntimeError:  # inference tensors keep no version counter
            return None
        base = t if t._base is None else t._base
        return base, (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device, version)

    def check(self, num_rows: int, coeffs: torch.Tensor, offsets: torch.Tensor
              ) -> OneHot | None:
        """``check_values(num_rows, coeffs, offsets)``, read once per unchanged pair."""
        c_state, o_state = self._state(coeffs), self._state(offsets)
        if c_state is None or o_state is None:
            return check_values(num_rows, coeffs, offsets)
        key = (id(c_state[0]), id(o_state[0]), num_rows)
        entry = self.entries.get(key)
        if (entry is not None and entry[0]() is c_state[0] and entry[1]() is o_state[0]
                and entry[2] == (c_state[1], o_state[1])):
            return entry[3]
        result = check_values(num_rows, coeffs, offsets)  # raises: nothing is cached
        with self.lock:
            if len(self.entries) >= self.SIZE:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = (weakref.ref(c_state[0]), weakref.ref(o_state[0]),
                                 (c_state[1], o_state[1]), result)
        return result

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


_validated = _Validated()


def check_bounds(bounds: list[int], num_rows: int, decreasing: bool | None = None) -> None:
    """The offsets rules on offsets already read to the host (``decreasing``: whether the
    caller found them decreasing, None: compute it here)."""
    if bounds[0] != 0:
        raise ValueError(f"interp_linear: offsets must start at 0, got {bounds[0]}")
    if decreasing is None:
        decreasing = any(b < a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    if decreasing:
        raise ValueError("interp_linear: offsets must be non-decreasing")
    if bounds[-1] != num_rows:
        raise ValueError(f"interp_linear: offsets must end at the row count {num_rows}, "
                         f"got {bounds[-1]}")


def _assert_values(num_rows: int, coeffs: torch.Tensor, offsets: torch.Tensor) -> None:
    """``check_values`` as asserts that ``torch.compile`` traces into the graph: reading
    the values on the host would be a data-dependent branch (a graph break)."""
    torch._assert_async(offsets[0] == 0, "interp_linear: offsets must start at 0")
    torch._assert_async((offsets[1:] >= offsets[:-1]).all(),
                        "interp_linear: offsets must be non-decreasing")
    torch._assert_async(offsets[-1] == num_rows,
                        "interp_linear: offsets must end at the row count")
    torch._assert_async(torch.isfinite(coeffs).all(),
                        "interp_linear: coeffs contain NaN or infinity")


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _is_meta(*tensors: torch.Tensor) -> bool:
    """Meta tensors carry shapes, no values: there is nothing to check (shape propagation)."""
    return any(t.is_meta for t in tensors)


def _is_capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()
