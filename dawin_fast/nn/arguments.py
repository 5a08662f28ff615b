"""Which arguments of a call are per-sample: the rule ``dawinize``'s models apply.

A converted model sorts its batch by coefficient group, so every per-sample tensor it is
given must be sorted the same way, and every per-sample tensor it returns put back. The
batch size B is stated by the coefficients ([B, M] rows, or ``cluster_labels`` [B]); then,
for each tensor anywhere in the arguments (positional or keyword, inside tuples, lists and
mappings such as Hugging Face's ``BatchEncoding``):

* an argument named in ``shared`` is passed as it is; one named in ``per_sample`` must
  have dim 0 = B and is sorted; the first positional argument (the input) is per-sample;
* a tensor whose dim 0 is not B (a scalar, a [1, ...] broadcast, a [L, L] mask) is shared;
* a tensor whose dim 0 is B is per-sample, unless it is ambiguous: one dim only ([B] could
  be shared positions [L] with L = B) or B again in another dim ([B, B] could be an
  [L, L] mask). An ambiguous tensor is refused with a message saying how to declare it.

Outputs: every tensor whose dim 0 is B is put back in caller order (Hugging Face
``ModelOutput`` fields included); the rest (a loss) comes back as it is; a tensor that is
sample-by-sample along another dim ([C, B], or a square [B, B]) is refused (it may be
sorted along that dim too).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch

Permute = Callable[[torch.Tensor], torch.Tensor]


def argument_names(forward: Callable[..., Any], count: int) -> list[str]:
    """Names of the first ``count`` positional arguments of ``forward`` (``args[i]`` where
    the signature does not tell)."""
    try:
        params = [p for p in inspect.signature(forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i].name if i < len(params) else f"args[{i}]" for i in range(count)]


def _is_ambiguous(t: torch.Tensor, batch: int) -> bool:
    return t.dim() == 1 or batch in t.shape[1:]


def sort_argument(value: Any, name: str, batch: int, permute: Permute, declared: str | None,
                  who: str) -> Any:
    """``value`` with its per-sample tensors sorted by ``permute``; ``declared`` is
    "per_sample", "shared" or None (the rule decides)."""
    if isinstance(value, torch.Tensor):
        if declared == "shared":
            return value
        leads = value.dim() >= 1 and value.shape[0] == batch
        if declared == "per_sample":
            if not leads:
                raise ValueError(f"{who}: argument {name!r} is declared per-sample but has "
                                 f"shape {tuple(value.shape)}, not [B={batch}, ...]")
            return permute(value)
        if not leads:
            return value
        if _is_ambiguous(value, batch):
            raise ValueError(
                f"{who}: argument {name!r} has shape {tuple(value.shape)}: its dim 0 is the "
                f"batch size {batch}, but a shared tensor could have that shape too; declare "
                f"it: per_sample=[{name.split('[')[0]!r}] or shared=[{name.split('[')[0]!r}]")
        return permute(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(sort_argument(v, f"{name}[{i}]", batch, permute, declared, who)
                             for i, v in enumerate(value)))
    if isinstance(value, (tuple, list)):
        return type(value)(sort_argument(v, f"{name}[{i}]", batch, permute, declared, who)
                           for i, v in enumerate(value))
    if isinstance(value, Mapping):
        sorted_items = {k: sort_argument(v, f"{name}[{k!r}]", batch, permute, declared, who)
                        for k, v in value.items()}
        try:
            return type(value)(sorted_items)
        except TypeError:  # a mapping type built otherwise: a plain dict
            return sorted_items
    return value


def sort_arguments(args: tuple, kwargs: dict[str, Any], names: list[str], batch: int,
                   permute: Permute, per_sample: Collection[str], shared: Collection[str],
                   who: str) -> tuple[tuple, dict[str, Any]]:
    """Positional ``args`` (named ``names``) and ``kwargs`` sorted by the rule above; the
    first positional argument is per-sample unless declared shared."""
    def declared(name: str, first: bool) -> str | None:
        if name in shared:
            return "shared"
        return "per_sample" if name in per_sample or first else None

    sorted_args = tuple(sort_argument(a, n, batch, permute, declared(n, i == 0), who)
                        for i, (a, n) in enumerate(zip(args, names, strict=True)))
    sorted_kwargs = {k: sort_argument(v, k, batch, permute, declared(k, False), who)
                     for k, v in kwargs.items()}
    return sorted_args, sorted_kwargs


def check_declarations(per_sample: Collection[str], shared: Collection[str],
                       names: Collection[str], who: str) -> None:
    """Raise for a declared name that is no argument of the call (a misspelling)."""
    both = set(per_sample) & set(shared)
    if both:
        raise ValueError(f"{who}: {sorted(both)} declared both per_sample and shared")
    for name in (*per_sample, *shared):
        if name not in names:
            raise ValueError(f"{who}: declared argument {name!r} is not passed; the call "
                             f"passes {sorted(names)}")


def unsort_output(out: Any, unpermute: Permute, batch: int, who: str = "DaWinModel",
                  name: str = "output") -> Any:
    """Every tensor of an output whose dim 0 is ``batch`` back in caller order, keeping
    container types (tuples, namedtuples, lists, dicts, Hugging Face's ModelOutput).

    A tensor that looks sample-by-sample along a dim other than 0 (CLIP's logits [C texts,
    B images], a square [B, B] similarity matrix) may have been sorted along it too, which
    dim 0 alone does not undo: refused, naming it, rather than returned half sorted. (A
    per-sample model's [B, L, D] with L = B is unsorted along dim 0, its batch dim.)
    """
    if isinstance(out, torch.Tensor):
        square = out.dim() == 2 and out.shape == (batch, batch)
        if batch > 1 and (square or (out.dim() >= 1 and out.shape[0] != batch
                                     and batch in out.shape[1:])):
            raise ValueError(
                f"{who}: {name} has shape {tuple(out.shape)}: the batch size {batch} is in a "
                f"dim other than 0, which may follow the samples too, and dawinize cannot tell; "
                f"use a batch size no other dim of the outputs has, or one row [M]")
        return unpermute(out) if out.dim() >= 1 and out.shape[0] == batch else out
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(unsort_output(o, unpermute, batch, who, f"{name}.{f}")
                           for f, o in zip(out._fields, out, strict=True)))
    if isinstance(out, (tuple, list)):
        return type(out)(unsort_output(o, unpermute, batch, who, f"{name}[{i}]")
                         for i, o in enumerate(out))
    if isinstance(out, Mapping):
        mapped = {k: unsort_output(v, unpermute, batch, who, f"{name}.{k}")
                  for k, v in out.items()}
        try:
            return type(out)(**mapped)
        except TypeError:  # non-string keys, or a constructor of another shape
            try:
                return type(out)(mapped)
            except TypeError:
                return mapped
    return out
