"""Loading a FusionBench model pool for our algorithms: copies and architecture checks.

* ``load_pool``: the pretrained model and the task models, each checked against the
  pretrained one before any work (one message naming the odd model and the first
  parameter that differs), and copied when the pool holds the module itself: FusionBench's
  ``load_model`` returns an in-memory pool's module as is, and its WEMoE turns the expert
  modules it is given into task vectors in place, so a second run on the same pool would
  merge task vectors of task vectors.
* ``zero_shot_needs``: what the zero-shot heads need from the pool (a processor and a CLIP
  checkpoint with its text model), said before any work.
"""

from __future__ import annotations

import copy

from torch import nn

PRETRAINED = "_pretrained_"


def _is_in_memory(modelpool, name: str) -> bool:
    models = getattr(modelpool, "_models", None)
    return hasattr(models, "get") and isinstance(models.get(name), nn.Module)


def _load(modelpool, name: str) -> nn.Module:
    model = modelpool.load_model(name)
    return copy.deepcopy(model) if _is_in_memory(modelpool, name) else model


def architecture_difference(base: nn.Module, model: nn.Module) -> str | None:
    """The first parameter or buffer where ``model`` differs from ``base`` in name, shape
    or dtype (in ``base``'s order, then ``model``'s extra names), or None."""
    base_state, state = base.state_dict(), model.state_dict()
    for name, value in base_state.items():
        if name not in state:
            return f"has no '{name}' (missing parameter)"
        if state[name].shape != value.shape:
            return (f"has '{name}' of shape {list(state[name].shape)}, expected "
                    f"{list(value.shape)}")
        if state[name].dtype != value.dtype:
            return (f"has '{name}' in {str(state[name].dtype).removeprefix('torch.')}, "
                    f"expected {str(value.dtype).removeprefix('torch.')} (load every model "
                    f"in one dtype)")
    for name in state:
        if name not in base_state:
            return f"has an extra parameter '{name}'"
    return None


def load_pool(modelpool, method: str) -> tuple[nn.Module, list[nn.Module]]:
    """(pretrained model, [task models]) from ``modelpool``, checked and copied if needed.

    Raises ValueError naming the first task model whose architecture differs from the
    pretrained model's, and the first parameter that differs.
    """
    names = list(modelpool.model_names)
    if not getattr(modelpool, "has_pretrained", PRETRAINED in getattr(modelpool, "_models", {})):
        raise ValueError(f"{method}: the model pool has no '{PRETRAINED}' model (the "
                         f"pretrained model the task vectors are taken from)")
    if not names:
        raise ValueError(f"{method}: the model pool has no task model besides '{PRETRAINED}'")
    base = _load(modelpool, PRETRAINED)
    experts = []
    for name in names:
        model = _load(modelpool, name)
        if type(model) is not type(base):
            raise ValueError(f"{method}: model '{name}' is a {type(model).__name__}, "
                             f"'{PRETRAINED}' a {type(base).__name__}; every model of the "
                             f"pool must have the pretrained model's architecture")
        difference = architecture_difference(base, model)
        if difference is not None:
            raise ValueError(f"{method}: model '{name}' does not have the architecture of "
                             f"'{PRETRAINED}': it {difference}")
        experts.append(model)
    return base, experts


POOL_HELP = ("a pool whose '_pretrained_' is a CLIP checkpoint (a Hugging Face name or "
             "path: its text model builds the heads) and whose 'processor' is set "
             "(modelpool.processor=<the checkpoint's name>)")


def zero_shot_needs(modelpool, method: str, why: str, remedy: str) -> None:
    """Raise a clear error up front if the pool cannot give zero-shot heads (``why``: what
    needs them; ``remedy``: the other way out)."""
    if getattr(modelpool, "_processor", None) is None:
        raise ValueError(f"{method}: {why} needs zero-shot heads, built from the pool's "
                         f"CLIP text model and processor, but the model pool has no "
                         f"processor; {remedy}, or use {POOL_HELP}")


def zero_shot_error(method: str, why: str, remedy: str, error: Exception) -> ValueError:
    """The error to raise when building the zero-shot heads failed with ``error``."""
    return ValueError(f"{method}: {why} needs zero-shot heads, but the pool's "
                      f"'{PRETRAINED}' could not be loaded as a CLIP model with its text "
                      f"model ({type(error).__name__}: {error}); {remedy}, or use "
                      f"{POOL_HELP}")
