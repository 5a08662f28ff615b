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
                               f"would import and call {', '.join(sorted(set(refused))[:3])}; "
                               f"if the file is trusted, pass {TRUST_FLAG} (trust_pickles=True "
                               f"in Python) to read its tensors")
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


# ---------------------------------------------------------------------- trusted pickles

#: The command-line flag (``trust_pickles=True`` in Python) that lets a pickled model load.
TRUST_FLAG = "--trust-pickles"

# Modules whose classes a trusted pickle gets for real (installed, and stable across
# versions); every other class it names becomes a ``_Stub``, so that a model pickled by a
# code base the user does not have (wise-ft's ``src.models``, OpenAI's ``clip``, the
# task-vectors code), or by another open_clip version, still gives up its tensors.
_REAL_MODULES = ("torch", "collections", "builtins", "__builtin__", "copyreg", "copy_reg",
                 "_codecs", "numpy", "torchvision", "PIL", "functools", "enum", "argparse",
                 "pathlib")


class PickledState(dict):
    """The tensors of a pickled object, named as its ``state_dict()`` would name them;
    ``classes``: the "module.Name" of every class the pickle named (its architecture:
    ``QuickGELU`` among them, say)."""

    def __init__(self, tensors: Mapping[str, object], classes: frozenset[str]) -> None:
        super().__init__(tensors)
        self.classes = classes


class _Stub:
    """Stands in for a class a trusted pickle names but that is not to be imported; keeps
    the state the pickle gives it (an ``nn.Module``'s ``__dict__``: its parameters,
    buffers and child modules)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.__dict__["_stub_args"] = args

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_stub_state"] = state


def _unpickler_module(classes: set[str]):
    """A ``pickle_module`` for ``torch.load`` whose classes outside ``_REAL_MODULES`` are
    ``_Stub`` subclasses; records every class name in ``classes``."""
    import pickle
    import types

    stubs: dict[str, type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            classes.add(f"{module}.{name}")
            if module.split(".")[0] in _REAL_MODULES:
                try:
                    return super().find_class(module, name)
                except (ImportError, AttributeError):
                    pass
            key = f"{module}.{name}"
            if key not in stubs:
                stubs[key] = type(name, (_Stub,), {"__module__": module})
            return stubs[key]

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    return types.SimpleNamespace(Unpickler=Unpickler, load=load,
                                 __name__="dawin_fast_trusted_pickle")


def load_trusted_pickle(path: str, what: str = "checkpoint") -> PickledState:
    """The tensors of a pickled model or head (``torch.save(model)``), without the code
    that defined it: only for files the user trusts (``TRUST_FLAG``), as unpickling can run
    code. Its classes are not imported (``_Stub``); an ``nn.Module``'s parameters and
    persistent buffers are read from the state the pickle stores, under the names
    ``state_dict()`` gives them. A plain dict of tensors nested in it is flattened too."""
    _require_file(path, what)
    classes: set[str] = set()
    try:
        with _quiet_torch_load(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's FutureWarning on weights_only=False
            obj = torch.load(path, map_location="cpu", weights_only=False,
                             pickle_module=_unpickler_module(classes))
    except Exception as err:
        reason = one_line(err) or type(err).__name__
        raise CheckpointError(f"{what} {path}: cannot be unpickled ({reason})") from None
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(obj, "", tensors, set())
    return PickledState(tensors, frozenset(classes))


def _collect_tensors(obj: object, prefix: str, out: dict[str, torch.Tensor], seen: set[int]
                     ) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj.detach()
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(key, str):
                _collect_tensors(value, f"{prefix}{key}.", out, seen)
        return
    state = getattr(obj, "__dict__", None)
    if not isinstance(state, dict) or "_modules" not in state:
        return  # not a module: transforms, arguments, ... hold no weights
    skip = state.get("_non_persistent_buffers_set") or set()
    for key, value in (state.get("_parameters") or {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + key] = value.detach()
    for key, value in (state.get("_buffers") or {}).items():
        if isinstance(value, torch.Tensor) and key not in skip:
            out[prefix + key] = value.detach()
    for key, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{key}.", out, seen)


def load_tensors(path: str, what: str = "checkpoint", trust_pickles: bool = False) -> object:
    """The object stored at ``path``: safetensors, or a weights-only torch file.

    PyTorch zip files are memory-mapped: tensors are read from disk when first used. A
    pickled model (``torch.save(model)``) is refused unless ``trust_pickles``; then its
    tensors come back as a ``PickledState`` (see ``load_trusted_pickle``).
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
        refusal = _refusal(path, what, err, kind)
    if trust_pickles and "refusing to unpickle" in str(refusal):
        return load_trusted_pickle(path, what)
    raise refusal


def tensor_shapes(path: str, what: str = "checkpoint", trust_pickles: bool = False
                  ) -> dict[str, tuple[int, ...]]:
    """Name -> shape of a state-dict file, reading only what the shapes need (a trusted
    pickle is read whole: a ``PickledState`` of shapes, keeping its ``classes``)."""
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
    obj = load_tensors(path, what, trust_pickles)
    state = _state_dict(obj, path, what)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return PickledState(shapes, obj.classes) if isinstance(obj, PickledState) else shapes


def _state_dict(obj: object, path: str, what: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, PickledState):
        if not obj:
            raise CheckpointError(f"{what} {path}: a pickled object holding no tensors")
        return obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{what} {path}: not a plain state dict of named tensors")
    return dict(obj)


def load_state_dict(path: str, trust_pickles: bool = False) -> dict[str, torch.Tensor]:
    """A plain state dict (str -> Tensor); a {"state_dict": ...} wrapper is unwrapped."""
    return _state_dict(load_tensors(path, trust_pickles=trust_pickles), path, "checkpoint")


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


# ------------------------------------------------------------------- checkpoint layouts


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a checkpoint keeps its parts, each as a key prefix.

    The formats users download: open_clip's and OpenAI's CLIP state dicts (``visual.*``
    and the text tower), a vision tower alone, model-soups' and wise-ft's classifiers
    (``model.*`` or ``image_encoder.model.*`` plus ``classification_head.weight/bias``)
    and the task-vectors code's image encoders (``model.*``), each as a state dict or,
    behind ``TRUST_FLAG``, pickled.
    """

    name: str
    wrapper: str  # the ``WRAPPER_PREFIXES`` every key had (stripped)
    visual: str  # prefix of the vision tower's keys
    clip: str | None  # prefix of the whole CLIP model (text tower too); None: vision only
    head: str | None  # prefix of a classification head's 'weight' and 'bias'
    quick_gelu: bool | None  # the activation the weights were trained with; None: unknown


# Markers of OpenAI's own CLIP state dict (open_clip drops them when it converts one).
_OPENAI_KEYS = ("input_resolution", "context_length", "vocab_size")
_HEAD = "classification_head."


def recognise_layout(keys: Sequence[str], classes: frozenset[str] = frozenset()) -> Layout:
    """The layout of a checkpoint with these (wrapper-stripped) keys; ``classes``: those a
    trusted pickle named (its activation). Unknown layouts read as a vision tower, whose
    check then names the missing keys."""
    keys = list(keys)
    stripped, wrapper = strip_wrappers(dict.fromkeys(keys))
    keys = list(stripped)
    head = _HEAD if f"{_HEAD}weight" in keys else None
    for clip, name in (("image_encoder.model.", "wise-ft"), ("model.", "model-soups"),
                       ("", "open_clip")):
        if any(k.startswith(f"{clip}visual.") for k in keys):
            if clip == "model." and head is None:
                name = "task-vectors"
            openai = any(f"{clip}{k}" in keys for k in _OPENAI_KEYS)
            if clip == "" and openai:
                name = "OpenAI CLIP"
            break
    else:
        clip, name, openai = None, "vision tower", False
    # wise-ft and model-soups fine-tune OpenAI's CLIP with OpenAI's code: QuickGELU.
    quick_gelu: bool | None = True if openai or name in ("wise-ft", "model-soups") else None
    if any(c.endswith(".QuickGELU") for c in classes):
        quick_gelu = True
    elif "torch.nn.modules.activation.GELU" in classes:
        quick_gelu = False
    visual = "" if clip is None else f"{clip}visual."
    return Layout(name, wrapper, visual, clip, head, quick_gelu)


def _parts(state: Mapping[str, object], layout: Layout
           ) -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
    """(vision tower, head, whole CLIP) entries of a wrapper-stripped state, unprefixed."""
    def under(prefix: str | None) -> dict[str, object]:
        if prefix is None:
            return {}
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    clip = under(layout.clip)
    for key in _OPENAI_KEYS:
        clip.pop(key, None)
    return under(layout.visual), under(layout.head), clip


def split_visual_state(state: Mapping[str, object]) -> tuple[dict[str, object], str]:
    """(the vision tower's entries, the prefix they had in the file).

    Wrapper prefixes shared by every key (``WRAPPER_PREFIXES``: a DDP or compiled model's
    state dict) are stripped first; then the vision tower of a known layout
    (``recognise_layout``) is taken, or all entries of a vision-tower-only file. Messages
    put the prefix back, so they name keys as the file has them.
    """
    layout = recognise_layout(list(state), getattr(state, "classes", frozenset()))
    stripped, _ = strip_wrappers(state)
    return _parts(stripped, layout)[0], layout.wrapper + layout.visual


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
    quick_gelu: bool = False  # the MLP activation: QuickGELU (OpenAI's CLIP) or GELU


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


def arch_quick_gelu(arch: str) -> bool:
    """Whether open_clip's config ``arch`` uses QuickGELU (the ``-quickgelu`` ones)."""
    import open_clip

    return bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))


def meta_model(arch: str, quick_gelu: bool | None = None, device: str = "meta") -> nn.Module:
    """An open_clip CLIP of architecture ``arch`` on the meta device (no memory; ``device``
    "cpu": randomly initialised, its non-persistent buffers, the text tower's causal mask,
    computed); ``quick_gelu``: force the activation (None: the config's)."""
    import open_clip

    if arch not in open_clip.list_models():
        raise CheckpointError(f"unknown architecture {arch!r}: see open_clip.list_models(), or "
                              f"pass --model-config with a JSON config named {arch}.json")
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        with torch.device(device):
            model = open_clip.create_model(arch, pretrained=None, device=device,
                                           force_quick_gelu=bool(quick_gelu))
    except Exception as err:
        raise CheckpointError(f"architecture {arch!r}: open_clip cannot build it "
                              f"({one_line(err)})") from None
    finally:
        logging.getLogger().removeFilter(quiet)
    if quick_gelu is False and arch_quick_gelu(arch):
        _set_gelu(model)
    return model.eval()


def _set_gelu(model: nn.Module) -> None:
    """Replace QuickGELU by GELU (an ``-quickgelu`` config given GELU weights)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child).__name__ == "QuickGELU":
                setattr(module, name, nn.GELU())


def meta_visual(arch: str, quick_gelu: bool | None = None) -> nn.Module:
    """An open_clip vision tower of architecture ``arch`` on the meta device (no memory)."""
    return meta_model(arch, quick_gelu).visual.eval()


def inspect_arch(arch: str, quick_gelu: bool | None = None) -> ArchInfo:
    """Shapes, image size and feature size of ``arch``'s vision tower; a ``CheckpointError``
    if ``DaWinViT`` does not support it."""
    from ..nn.vit import DaWinViT

    visual = meta_visual(arch, quick_gelu)
    try:
        vit = DaWinViT.from_open_clip([visual])  # on meta: checks support, allocates nothing
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"--arch {arch}: {one_line(err)}") from None
    size = visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return ArchInfo(name=arch, shapes={k: tuple(v.shape) for k, v in visual.state_dict().items()},
                    image_size=size, channels=visual.conv1.in_channels,
                    feature_dim=vit.output_dim,
                    quick_gelu=arch_quick_gelu(arch) if quick_gelu is None else quick_gelu)


def pretrained_tags(arch: str) -> list[str]:
    """open_clip's pretrained weight names for ``arch`` (``openai``, ``laion2b_s34b_b79k``)."""
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(arch))


def is_pretrained_name(spec: str, arch: str) -> bool:
    """``spec`` names open_clip pretrained weights of ``arch`` (and is not a file here)."""
    return not os.path.exists(spec) and spec in pretrained_tags(arch)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """A checked checkpoint: a file, or open_clip pretrained weights (``pretrained``)."""

    spec: str
    layout: Layout
    head_shape: tuple[int, int] | None  # [C, D] of the classification head it holds
    has_text: bool  # holds a text tower (a zero-shot head can be built from it)
    pretrained: bool = False


def inspect_checkpoint(spec: str, arch: ArchInfo, trust_pickles: bool = False
                       ) -> CheckpointInfo:
    """Keys and shapes of a checkpoint against the architecture; a mismatch names the key.

    ``spec``: a file in any ``Layout``, or an open_clip pretrained name of ``arch``."""
    if is_pretrained_name(spec, arch.name):
        import open_clip

        cfg = open_clip.get_pretrained_cfg(arch.name, spec) or {}
        layout = Layout("open_clip pretrained", "", "visual.", "", None,
                        bool(cfg.get("quick_gelu", False)))
        return CheckpointInfo(spec, layout, None, True, pretrained=True)
    if not os.path.exists(spec) and (tags := pretrained_tags(arch.name)):
        raise CheckpointError(f"checkpoint not found: {spec} (nor an open_clip pretrained name "
                              f"for {arch.name}: {', '.join(tags[:6])})")
    all_shapes = tensor_shapes(spec, trust_pickles=trust_pickles)
    layout = recognise_layout(list(all_shapes), getattr(all_shapes, "classes", frozenset()))
    stripped, _ = strip_wrappers(all_shapes)
    shapes, head, clip = _parts(stripped, layout)
    prefix = layout.wrapper + layout.visual
    for key, expected in arch.shapes.items():
        if key not in shapes:
            raise CheckpointError(f"checkpoint {spec}: missing key '{prefix}{key}' for "
                                  f"{arch.name}{_layout_hint(shapes, arch)}")
        if tuple(shapes[key]) != expected:
            raise CheckpointError(
                f"checkpoint {spec}: key '{prefix}{key}' has shape {tuple(shapes[key])}, "
                f"{arch.name} expects {expected}")
    extra = sorted(set(shapes) - set(arch.shapes))
    if extra:
        raise CheckpointError(f"checkpoint {spec}: unexpected key '{prefix}{extra[0]}' for "
                              f"{arch.name}")
    head_shape = None
    if head:
        weight, bias = head.get("weight"), head.get("bias")
        if len(weight) != 2 or (bias is not None and tuple(bias) != tuple(weight[:1])):
            raise CheckpointError(f"checkpoint {spec}: '{layout.wrapper}{_HEAD}weight' "
                                  f"{list(weight)} and 'bias' {list(bias or [])}: expected "
                                  f"[C, D] and [C]")
        head_shape = tuple(weight)
    has_text = any(k.startswith("transformer.") for k in clip) and "token_embedding.weight" in clip
    return CheckpointInfo(spec, layout, head_shape, has_text)


def check_checkpoint(path: str, arch: ArchInfo, trust_pickles: bool = False) -> None:
    """``inspect_checkpoint`` without its result."""
    inspect_checkpoint(path, arch, trust_pickles)


def resolve_activation(arch: str, infos: Sequence[CheckpointInfo]) -> tuple[bool, str | None]:
    """(QuickGELU or not, a note saying so when it is not ``arch``'s own activation).

    OpenAI's CLIP weights were trained with QuickGELU; open_clip's ``ViT-B-32`` config
    builds GELU (``ViT-B-32-quickgelu`` builds QuickGELU), and the wrong one shifts every
    number. The checkpoints' own activation, where their layout tells it, wins; checkpoints
    that disagree are refused."""
    known = {info.spec: info.layout.quick_gelu for info in infos
             if info.layout.quick_gelu is not None}
    own = arch_quick_gelu(arch)
    if len(set(known.values())) > 1:
        quick = [s for s, q in known.items() if q]
        gelu = [s for s, q in known.items() if not q]
        raise CheckpointError(f"checkpoint {gelu[0]} was trained with GELU but checkpoint "
                              f"{quick[0]} with QuickGELU; every checkpoint must share one "
                              f"activation")
    if not known or next(iter(known.values())) == own:
        return own, None
    spec, quick = next(iter(known.items()))
    names = ("QuickGELU", "GELU") if quick else ("GELU", "QuickGELU")
    return quick, (f"note: --arch {arch} builds {names[1]}, but checkpoint {spec} was trained "
                   f"with {names[0]} ({_why(infos, spec)}): building {arch} with {names[0]}")


def _why(infos: Sequence[CheckpointInfo], spec: str) -> str:
    layout = next(i.layout for i in infos if i.spec == spec)
    return f"{layout.name} weights" if layout.name != "vision tower" else "its modules"


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
            f"state dict, optionally under 'module.', or a model-soups, wise-ft or "
            f"task-vectors checkpoint)")


@dataclasses.dataclass
class LoadedCheckpoint:
    """A checkpoint's vision tower, its classification head (if it holds one), and the
    whole CLIP model when it has a text tower (for a zero-shot head)."""

    visual: nn.Module
    head: nn.Linear | None
    clip: nn.Module | None


def load_checkpoint(spec: str, arch: ArchInfo, trust_pickles: bool = False,
                    with_clip: bool = False) -> LoadedCheckpoint:
    """A checkpoint's modules, its weights the file's own tensors (built on the meta
    device, then assigned: no random initialisation); ``with_clip``: also the whole CLIP
    model (the checkpoint must hold its text tower)."""
    info = inspect_checkpoint(spec, arch, trust_pickles)
    if info.pretrained:
        import open_clip

        model = open_clip.create_model(arch.name, pretrained=spec,
                                       force_quick_gelu=arch.quick_gelu).eval()
        return LoadedCheckpoint(model.visual, None, model if with_clip else None)
    state = load_state_dict(spec, trust_pickles)
    stripped, _ = strip_wrappers(state)
    visual_part, head_part, clip_part = _parts(stripped, info.layout)
    prefix = info.layout.wrapper + info.layout.visual
    for key, value in {**visual_part, **{f"{_HEAD}{k}": v for k, v in head_part.items()}}.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            shown = key if key.startswith(_HEAD) else prefix + key
            raise CheckpointError(f"checkpoint {spec}: '{shown}' contains NaN or infinity")
    model = None
    if with_clip:
        model = meta_model(arch.name, arch.quick_gelu, device="cpu")
        clip_state = {k: v.float() if v.is_floating_point() else v for k, v in clip_part.items()}
        missing, unexpected = model.load_state_dict(clip_state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {spec}: its CLIP model does not match "
                                  f"{arch.name} ({'missing' if missing else 'unexpected'} key "
                                  f"'{(missing or unexpected)[0]}')")
        visual = model.visual
    else:
        visual = meta_visual(arch.name, arch.quick_gelu)
        visual.load_state_dict({k: v.float() for k, v in visual_part.items()}, assign=True)
    meta = [n for n, t in [*visual.named_parameters(), *visual.named_buffers()] if t.is_meta]
    if meta:  # pragma: no cover - open_clip vision towers keep no unsaved state
        raise RuntimeError(f"{arch.name}: tensors not in the state dict: {meta[:3]}")
    head = None
    if head_part:
        head = _linear(head_part["weight"].float(), head_part.get("bias"))
    return LoadedCheckpoint(visual.eval(), head, model)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def load_visuals(arch: str, paths: Sequence[str], model_config: str | None = None,
                 trust_pickles: bool = False, quick_gelu: bool | None = None
                 ) -> list[nn.Module]:
    """One open_clip vision tower per checkpoint (``load_checkpoint``)."""
    if model_config is not None:
        register_model_config(model_config)
    info = inspect_arch(arch, quick_gelu)
    return [load_checkpoint(path, info, trust_pickles).visual for path in paths]


def zero_shot_head_weights(clip: nn.Module, arch: str,
                           class_names: Sequence[str] | None = None,
                           templates: Sequence[str] | None = None,
                           device: str = "cpu") -> torch.Tensor:
    """A zero-shot head [C, D] from a CLIP model's text tower: logit scale times each
    class's normalised mean text embedding over the templates (open_clip's
    ``build_zero_shot_classifier``; D is the CLIP embedding size, 512 for ViT-B/32 and
    ViT-B/16, 768 for ViT-L/14). Defaults: open_clip's ImageNet class names and OpenAI's
    80 ImageNet templates; a template is a string with ``{}`` for the class name."""
    import open_clip

    names = list(class_names or open_clip.IMAGENET_CLASSNAMES)
    prompts = list(templates or open_clip.OPENAI_IMAGENET_TEMPLATES)
    model = clip.to(device).eval()
    weights = open_clip.build_zero_shot_classifier(
        model, open_clip.get_tokenizer(arch), names, prompts, device=device)  # [D, C]
    return (model.logit_scale.exp() * weights.t()).float().cpu()


# --------------------------------------------------------------- task-vectors checkpoints


def load_image_encoder(path: str, arch: str, trust_pickles: bool = False,
                       quick_gelu: bool | None = None) -> nn.Module:
    """The open_clip vision tower of an image encoder from the task-vectors code (a pickled
    ``ImageEncoder``, behind ``trust_pickles``, or its state dict), or of any checkpoint
    ``load_checkpoint`` reads: what ``dawin_fast.task_vectors`` and ``DaWinViT`` take.

    The activation is the pickle's own (QuickGELU for OpenAI's weights) where it names it,
    else ``quick_gelu`` (None: ``arch``'s)."""
    base = inspect_arch(arch, quick_gelu)
    info = inspect_checkpoint(path, base, trust_pickles)
    if quick_gelu is None and info.layout.quick_gelu is not None:
        base = inspect_arch(arch, info.layout.quick_gelu)
    return load_checkpoint(path, base, trust_pickles).visual


def load_classification_head(path: str, trust_pickles: bool = False) -> nn.Linear:
    """A task's head from the task-vectors or wise-ft code (a pickled
    ``ClassificationHead``, behind ``trust_pickles``, or its state dict with 'weight' and
    'bias'). Those heads L2-normalise the features first: use ``normalize=True``."""
    obj = load_tensors(path, "head", trust_pickles)
    state = strip_wrappers(obj)[0] if isinstance(obj, Mapping) else obj
    if not (isinstance(state, Mapping) and isinstance(state.get("weight"), torch.Tensor)
            and state["weight"].dim() == 2):
        raise CheckpointError(f"head {path}: expected a classification head with 'weight' "
                              f"[C, D] (and 'bias' [C])")
    return _linear(state["weight"].float(), state.get("bias"))


# ------------------------------------------------------------------------------- heads


@dataclasses.dataclass(frozen=True)
class HeadInfo:
    path: str
    shape: tuple[int, int]  # [C, D]
    has_bias: bool


def inspect_head(path: str, trust_pickles: bool = False) -> HeadInfo:
    """A head's shape: a tensor [C, D] (zero-shot) or {"weight" [C, D], "bias" [C]} (a
    pickled ``ClassificationHead`` too, behind ``trust_pickles``)."""
    obj = _head_object(path, trust_pickles)
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


def _head_object(path: str, trust_pickles: bool = False) -> object:
    """The head file's tensor or dict; a DDP-saved linear's 'module.weight' and
    'module.bias' (``WRAPPER_PREFIXES``) become 'weight' and 'bias'."""
    obj = load_tensors(path, "head", trust_pickles)
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


def load_head(path: str, trust_pickles: bool = False) -> torch.Tensor | nn.Linear:
    """A classification head: a tensor [C, D] (zero-shot) or {"weight", "bias"} (linear)."""
    inspect_head(path, trust_pickles)
    obj = _head_object(path, trust_pickles)
    if isinstance(obj, torch.Tensor):
        return obj.float()
    weight, bias = obj["weight"], obj.get("bias")
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear
