"""Read user checkpoints, heads and models safely, with one-line errors.

State dicts load with ``torch.load(weights_only=True)`` (or safetensors): a pickle holding
anything but tensors and plain containers is refused, never executed. Before that, the
first bytes of the file say what it is, so a truncated archive, a directory or an image
given as a checkpoint is named as such instead of being called a malicious pickle.

Cheap inspection, for validating everything before any work: safetensors headers
(``safe_open``: shapes without reading the data), PyTorch zip checkpoints memory-mapped
(``mmap=True``: tensors are read only when used), and open_clip models built on the meta
device (shapes without allocating or initialising weights).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import os
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from .errors import UserError, one_line


class CheckpointError(UserError):
    """A checkpoint, head or dataset that cannot be used; the message says why."""


# ------------------------------------------------------------------------ what a file is

_MAGIC = (
    (b"PK\x03\x04", "zip"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive (decompress it first)"),
    (b"\x93NUMPY", "a NumPy .npy file"),
)


def _kind(path: str, head: bytes) -> str:
    """"zip", "pickle", "safetensors", or a description of another kind of file."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":  # u64 header length, then a JSON header
        return "safetensors"
    if path.endswith(".safetensors"):
        return "safetensors"  # let safetensors say what is wrong with it
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON or text file"
    return "not a PyTorch or safetensors file"


def _require_file(path: str, what: str) -> int:
    """The file's size; a ``CheckpointError`` if it is missing, a directory or empty."""
    if not os.path.exists(path):
        raise CheckpointError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path}: is a directory; expected a .pt or "
                              f".safetensors file")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{what} {path}: is empty (0 bytes)")
    return size


def _pickle_globals(data: bytes) -> list[str] | None:
    """The "module.name" globals a pickle would import, read with ``pickletools`` (nothing
    is executed); None if the pickle is cut short."""
    found, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except ValueError:  # "pickle exhausted before seeing STOP"
        return None
    return found


def _unsafe(names: list[str]) -> list[str]:
    """Globals outside what a weights-only torch file uses."""
    return [n for n in names if not n.startswith(("torch.", "collections.OrderedDict"))]


def _pickle_bytes(path: str, kind: str) -> bytes | None:
    """The pickle of a raw pickle file, or of a PyTorch zip archive (its data.pkl)."""
    if kind == "pickle":
        with open(path, "rb") as f:
            return f.read()
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
        return archive.read(name) if name else None


def _refusal(path: str, what: str, err: Exception, kind: str) -> CheckpointError:
    """Explain why ``torch.load(weights_only=True)`` failed, from the file's own bytes
    (``pickletools`` reads them without executing anything), and without torch's advice
    to set ``weights_only=False``: that would run whatever the file holds."""
    if kind == "zip" and not zipfile.is_zipfile(path):
        return CheckpointError(f"{what} {path}: truncated or corrupt PyTorch file (a zip "
                               f"archive without its directory: an interrupted copy?)")
    data = _pickle_bytes(path, kind)
    if data is None:
        return CheckpointError(f"{what} {path}: a zip archive but not a PyTorch checkpoint "
                               f"(no data.pkl in it)")
    names = _pickle_globals(data)
    if names is None:
        return CheckpointError(f"{what} {path}: truncated pickle (it ends before its STOP "
                               f"opcode)")
    text = str(err)
    refused = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", text) or _unsafe(names)
    if refused:
        return CheckpointError(f"{what} {path}: refusing to unpickle arbitrary objects: it "
                               f"would import and call {', '.join(sorted(set(refused))[:3])}")
    protocol = data[1] if data[:1] == b"\x80" else 0
    if "Unsupported operand" in text and protocol > 2:
        return CheckpointError(f"{what} {path}: saved with pickle protocol {protocol}, which "
                               f"torch's safe loader does not read; save it with torch.save's "
                               f"default protocol or as .safetensors")
    if kind == "pickle" and not names:
        return CheckpointError(f"{what} {path}: a plain Python pickle, not a torch.save file; "
                               f"save it with torch.save or as .safetensors")
    match = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = one_line(match.group(1)) if match else one_line(text).split(". ")[0]
    return CheckpointError(f"{what} {path}: cannot be read as a PyTorch file ({detail})")


@contextlib.contextmanager
def _quiet_torch_load() -> Iterator[None]:
    with warnings.catch_warnings():
        # torch warns that a protocol-4 pickle is not its default; nothing for the user.
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        yield


def load_tensors(path: str, what: str = "checkpoint") -> object:
    """The object stored at ``path``: safetensors, or a weights-only torch file.

    PyTorch zip files are memory-mapped: tensors are read from disk when first used.
    """
    _require_file(path, what)
    with open(path, "rb") as f:
        kind = _kind(path, f.read(16))
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as err:
            raise CheckpointError(f"{what} {path}: not a valid safetensors file "
                                  f"({one_line(err)})") from None
    if kind not in ("zip", "pickle"):
        raise CheckpointError(f"{what} {path}: {kind}; expected a .pt (torch.save) or "
                              f".safetensors file")
    try:
        with _quiet_torch_load():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except Exception as err:
        raise _refusal(path, what, err, kind) from None


def tensor_shapes(path: str, what: str = "checkpoint") -> dict[str, tuple[int, ...]]:
    """Name -> shape of a state-dict file, reading only what the shapes need."""
    _require_file(path, what)
    with open(path, "rb") as f:
        kind = _kind(path, f.read(16))
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:
            raise CheckpointError(f"{what} {path}: not a valid safetensors file "
                                  f"({one_line(err)})") from None
    state = _state_dict(load_tensors(path, what), path, what)
    return {k: tuple(v.shape) for k, v in state.items()}


def _state_dict(obj: object, path: str, what: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{what} {path}: not a plain state dict of named tensors")
    return dict(obj)


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A plain state dict (str -> Tensor); a {"state_dict": ...} wrapper is unwrapped."""
    return _state_dict(load_tensors(path), path, "checkpoint")


# Prefixes that wrappers put on every key: DistributedDataParallel / DataParallel
# ("module."), torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrappers(state: Mapping[str, object]) -> tuple[dict[str, object], str]:
    """(``state`` without the ``WRAPPER_PREFIXES`` every key shares, those prefixes)."""
    prefix, state = "", dict(state)
    while state and all(isinstance(k, str) for k in state) and (wrapper := next(
            (w for w in WRAPPER_PREFIXES if all(k.startswith(w) for k in state)), None)):
        state = {k[len(wrapper):]: v for k, v in state.items()}
        prefix += wrapper
    return state, prefix


def split_visual_state(state: Mapping[str, object]) -> tuple[dict[str, object], str]:
    """(the vision tower's entries, the prefix they had in the file).

    Wrapper prefixes shared by every key (``WRAPPER_PREFIXES``: a DDP or compiled model's
    state dict) are stripped first; then a full CLIP state dict's ``visual.*`` entries are
    taken, or all entries of a vision-tower-only file. Messages put the prefix back, so
    they name keys as the file has them.
    """
    state, prefix = strip_wrappers(state)
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return (visual, prefix + "visual.") if visual else (state, prefix)


def visual_state(state: Mapping[str, object]) -> dict[str, object]:
    """The vision tower's entries (``split_visual_state`` without the prefix)."""
    return split_visual_state(state)[0]


# ------------------------------------------------------------------------------ models


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    """What the checks need to know of an open_clip vision tower, without its weights."""

    name: str
    shapes: dict[str, tuple[int, ...]]  # the vision tower's state dict
    image_size: tuple[int, int]
    channels: int
    feature_dim: int  # the size of the features the heads see


class _DropRandomInitWarning(logging.Filter):
    # open_clip logs it when built without pretrained weights: ours load right after.
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


def register_model_config(model_config: str) -> str:
    """Register an open_clip model config file; returns its architecture name."""
    import json

    _require_file(model_config, "model config")
    try:
        with open(model_config, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"model config {model_config}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("vision_cfg"), dict):
        raise CheckpointError(f"model config {model_config}: expected an open_clip config "
                              f"with 'embed_dim', 'vision_cfg' and 'text_cfg'")
    import open_clip

    open_clip.add_model_config(model_config)
    return os.path.splitext(os.path.basename(model_config))[0]


def meta_visual(arch: str) -> nn.Module:
    """An open_clip vision tower of architecture ``arch`` on the meta device (no memory)."""
    import open_clip

    if arch not in open_clip.list_models():
        raise CheckpointError(f"unknown architecture {arch!r}: see open_clip.list_models(), or "
                              f"pass --model-config with a JSON config named {arch}.json")
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        with torch.device("meta"):
            model = open_clip.create_model(arch, pretrained=None, device="meta")
    except Exception as err:
        raise CheckpointError(f"architecture {arch!r}: open_clip cannot build it "
                              f"({one_line(err)})") from None
    finally:
        logging.getLogger().removeFilter(quiet)
    return model.visual.eval()


def inspect_arch(arch: str) -> ArchInfo:
    """Shapes, image size and feature size of ``arch``'s vision tower; a ``CheckpointError``
    if ``DaWinViT`` does not support it."""
    from ..nn.vit import DaWinViT

    visual = meta_visual(arch)
    try:
        vit = DaWinViT.from_open_clip([visual])  # on meta: checks support, allocates nothing
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"--arch {arch}: {one_line(err)}") from None
    size = visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return ArchInfo(name=arch, shapes={k: tuple(v.shape) for k, v in visual.state_dict().items()},
                    image_size=size, channels=visual.conv1.in_channels,
                    feature_dim=vit.output_dim)


def check_checkpoint(path: str, arch: ArchInfo) -> None:
    """Keys and shapes of a checkpoint against the architecture; a mismatch names the key."""
    shapes, prefix = split_visual_state(tensor_shapes(path))
    for key, expected in arch.shapes.items():
        if key not in shapes:
            raise CheckpointError(f"checkpoint {path}: missing key '{prefix}{key}' for "
                                  f"{arch.name}{_layout_hint(shapes, arch)}")
        if tuple(shapes[key]) != expected:
            raise CheckpointError(
                f"checkpoint {path}: key '{prefix}{key}' has shape {tuple(shapes[key])}, "
                f"{arch.name} expects {expected}")
    extra = sorted(set(shapes) - set(arch.shapes))
    if extra:
        raise CheckpointError(f"checkpoint {path}: unexpected key '{prefix}{extra[0]}' for "
                              f"{arch.name}")


def _layout_hint(shapes: Mapping[str, object], arch: ArchInfo) -> str:
    """Why no expected key matched, when the file's keys are the model's under another
    prefix (a wrapper we do not know): say which (the prefix most keys share)."""
    if any(k in shapes for k in arch.shapes):
        return ""
    prefixes = collections.Counter(
        key[:-len(name)] for key in shapes for name in arch.shapes if key.endswith("." + name))
    if not prefixes:
        return ""
    prefix = prefixes.most_common(1)[0][0]
    return (f" (its keys start with '{prefix}'; expected an open_clip CLIP or vision-tower "
            f"state dict, optionally under 'module.')")


def load_visuals(arch: str, paths: Sequence[str], model_config: str | None = None
                 ) -> list[nn.Module]:
    """One open_clip vision tower per checkpoint, its weights the checkpoint's own tensors
    (built on the meta device, then assigned: no random initialisation)."""
    if model_config is not None:
        register_model_config(model_config)
    info = inspect_arch(arch)
    visuals = []
    for path in paths:
        check_checkpoint(path, info)
        state, prefix = split_visual_state(load_state_dict(path))
        for key, value in state.items():  # read once here, while loading
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"checkpoint {path}: '{prefix}{key}' contains NaN or "
                                      f"infinity")
        visual = meta_visual(arch)
        visual.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
        meta = [n for n, t in [*visual.named_parameters(), *visual.named_buffers()] if t.is_meta]
        if meta:  # pragma: no cover - open_clip vision towers keep no unsaved state
            raise RuntimeError(f"{arch}: tensors not in the state dict: {meta[:3]}")
        visuals.append(visual)
    return visuals


# ------------------------------------------------------------------------------- heads


@dataclasses.dataclass(frozen=True)
class HeadInfo:
    path: str
    shape: tuple[int, int]  # [C, D]
    has_bias: bool


def inspect_head(path: str) -> HeadInfo:
    """A head's shape: a tensor [C, D] (zero-shot) or {"weight" [C, D], "bias" [C]}."""
    obj = _head_object(path)
    if isinstance(obj, torch.Tensor):
        if obj.dim() != 2 or not obj.is_floating_point():
            raise CheckpointError(f"head {path}: expected a floating-point [C, D] tensor, got "
                                  f"{obj.dtype} {list(obj.shape)}")
        _check_finite(obj, path)
        return HeadInfo(path, tuple(obj.shape), False)
    if isinstance(obj, Mapping) and isinstance(obj.get("weight"), torch.Tensor):
        weight, bias = obj["weight"], obj.get("bias")
        if weight.dim() != 2 or not weight.is_floating_point():
            raise CheckpointError(f"head {path}: 'weight' must be a floating-point [C, D] "
                                  f"tensor, got {weight.dtype} {list(weight.shape)}")
        if bias is not None and (not isinstance(bias, torch.Tensor)
                                 or tuple(bias.shape) != tuple(weight.shape[:1])):
            got = list(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise CheckpointError(f"head {path}: 'bias' must be [C] = [{weight.shape[0]}] "
                                  f"for weight {list(weight.shape)}, got {got}")
        _check_finite(weight, path, "'weight' ")
        if bias is not None:
            _check_finite(bias, path, "'bias' ")
        return HeadInfo(path, tuple(weight.shape), bias is not None)
    raise CheckpointError(f"head {path}: expected a [C, D] tensor or a dict with 'weight' "
                          f"[C, D] (and 'bias' [C])")


def _head_object(path: str) -> object:
    """The head file's tensor or dict; a DDP-saved linear's 'module.weight' and
    'module.bias' (``WRAPPER_PREFIXES``) become 'weight' and 'bias'."""
    obj = load_tensors(path, "head")
    return strip_wrappers(obj)[0] if isinstance(obj, Mapping) else obj


def _check_finite(tensor: torch.Tensor, path: str, what: str = "") -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"head {path}: {what}contains NaN or infinity")


def check_heads(heads: Sequence[HeadInfo], arch: ArchInfo) -> int:
    """The class count C of the heads; each head must be [C, feature size of ``arch``]."""
    for head in heads:
        if head.shape[1] != arch.feature_dim:
            raise CheckpointError(
                f"head {head.path}: shape {list(head.shape)}, but {arch.name} has "
                f"{arch.feature_dim} features; expected [C, {arch.feature_dim}]")
    for head in heads[1:]:
        if head.shape[0] != heads[0].shape[0]:
            raise CheckpointError(
                f"head {head.path}: {head.shape[0]} classes, but head {heads[0].path} has "
                f"{heads[0].shape[0]}; every head must score the same classes")
    return heads[0].shape[0]


def load_head(path: str) -> torch.Tensor | nn.Linear:
    """A classification head: a tensor [C, D] (zero-shot) or {"weight", "bias"} (linear)."""
    inspect_head(path)
    obj = _head_object(path)
    if isinstance(obj, torch.Tensor):
        return obj.float()
    weight, bias = obj["weight"], obj.get("bias")
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear
