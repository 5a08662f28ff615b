"""Load user checkpoints, heads and datasets safely, with one-line errors.

State dicts load with ``torch.load(weights_only=True)`` (or safetensors): a pickle holding
anything but tensors and plain containers is refused, never executed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint, head or dataset that cannot be used; the message says why."""


def _require_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise CheckpointError(f"{what} not found: {path}")


def load_tensors(path: str, what: str = "checkpoint") -> object:
    """The object stored at ``path``: safetensors, or a weights-only torch pickle."""
    _require_file(path, what)
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - the demo extra installs it
            raise CheckpointError(".safetensors files need the safetensors package") from err
        try:
            return load_file(path, device="cpu")
        except Exception as err:
            raise CheckpointError(f"{what} {path}: not a valid safetensors file ({err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{what} {path}: not a plain tensor file; refusing to unpickle arbitrary objects "
            f"({first_line})"
        ) from None


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A plain state dict (str -> Tensor); a {"state_dict": ...} wrapper is unwrapped."""
    obj = load_tensors(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"checkpoint {path}: not a plain state dict of named tensors")
    return dict(obj)


def visual_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower's entries: a full CLIP state dict's ``visual.*``, or all entries."""
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return visual or dict(state)


def create_visual(arch: str, model_config: str | None = None) -> nn.Module:
    """A randomly initialised open_clip vision tower of architecture ``arch``."""
    import open_clip

    if model_config is not None:
        _require_file(model_config, "model config")
        open_clip.add_model_config(model_config)
    if arch not in open_clip.list_models():
        raise CheckpointError(f"unknown architecture {arch!r}: see open_clip.list_models(), or "
                              f"pass --model-config with a JSON config named {arch}.json")
    return open_clip.create_model(arch, pretrained=None).visual


def load_visuals(arch: str, paths: Sequence[str], model_config: str | None = None
                 ) -> list[nn.Module]:
    """One open_clip vision tower per checkpoint; a mismatch names the first bad key."""
    visuals = []
    for path in paths:
        visual = create_visual(arch, model_config)
        state = visual_state(load_state_dict(path))
        expected = visual.state_dict()
        for key in expected:
            if key not in state:
                raise CheckpointError(f"checkpoint {path}: missing key '{key}' for {arch}")
            if state[key].shape != expected[key].shape:
                raise CheckpointError(
                    f"checkpoint {path}: key '{key}' has shape {tuple(state[key].shape)}, "
                    f"{arch} expects {tuple(expected[key].shape)}")
        extra = sorted(set(state) - set(expected))
        if extra:
            raise CheckpointError(f"checkpoint {path}: unexpected key '{extra[0]}' for {arch}")
        visual.load_state_dict(state)
        visuals.append(visual.eval())
    return visuals


def load_head(path: str) -> torch.Tensor | nn.Linear:
    """A classification head: a tensor [C, D] (zero-shot) or {"weight", "bias"} (linear)."""
    obj = load_tensors(path, "head")
    if isinstance(obj, torch.Tensor):
        if obj.dim() != 2:
            raise CheckpointError(f"head {path}: expected a [C, D] tensor, got "
                                  f"{tuple(obj.shape)}")
        return obj.float()
    if isinstance(obj, Mapping) and isinstance(obj.get("weight"), torch.Tensor):
        weight, bias = obj["weight"], obj.get("bias")
        if weight.dim() != 2 or (bias is not None and bias.shape != weight.shape[:1]):
            raise CheckpointError(f"head {path}: weight must be [C, D] and bias [C]")
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        return linear
    raise CheckpointError(f"head {path}: expected a [C, D] tensor or a dict with 'weight'")


def load_dataset(path: str, transform=None) -> torch.utils.data.Dataset:
    """An ImageFolder directory, or a tensor file {"images": [N,3,H,W], "labels": [N]}."""
    _require_file(path, "dataset")
    if os.path.isdir(path):
        from torchvision.datasets import ImageFolder

        try:
            dataset = ImageFolder(path, transform=transform)
        except (FileNotFoundError, RuntimeError) as err:
            raise CheckpointError(f"dataset {path}: {err}") from None
    else:
        obj = load_tensors(path, "dataset")
        if not (isinstance(obj, Mapping) and isinstance(obj.get("images"), torch.Tensor)
                and isinstance(obj.get("labels"), torch.Tensor)):
            raise CheckpointError(f"dataset {path}: expected a dict with 'images' [N, 3, H, W] "
                                  f"and 'labels' [N] tensors")
        images, labels = obj["images"], obj["labels"]
        if images.dim() != 4 or labels.shape != images.shape[:1]:
            raise CheckpointError(f"dataset {path}: images {tuple(images.shape)} and labels "
                                  f"{tuple(labels.shape)} do not match")
        dataset = torch.utils.data.TensorDataset(images.float(), labels.long())
    if len(dataset) == 0:
        raise CheckpointError(f"dataset {path} is empty")
    return dataset
