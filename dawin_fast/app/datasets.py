"""Evaluation data, checked before any work: an ImageFolder directory, a tensor file, or a
robustness benchmark in the layout of its official download (``LAYOUTS``: ImageNet,
ImageNet-V2, -R, -A, -Sketch, ObjectNet).

Each benchmark is scored as the robust fine-tuning papers do (wise-ft, model soups,
DaWin): its labels index its own classes; ImageNet-R and -A take the 1000-class logits at
their 200 classes, ObjectNet takes, for each of its classes, the largest logit of the
ImageNet classes mapped to it (``DataInfo.class_groups``), and every entropy is computed
on those projected logits. ObjectNet images also lose a 2-pixel border first (the
dataset's frame).

Corrupt images abort the run, naming the file: a silently smaller test set would change
the accuracy without anyone noticing. ``inspect_dataset`` opens every image with PIL's
``verify()`` (headers and checksums, no decoding) before any model loads; an image that
passes it but still fails to decode aborts the run when it is reached, also by name,
before any report is written (``BadImage`` carries it out of the loader's workers).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch.utils.data import Dataset, default_collate
from torchvision.datasets import ImageFolder

from .checkpoints import ArchInfo, CheckpointError, load_tensors
from .errors import one_line

# Normalised pixels are of order 1 (open_clip: within about ±3); even raw 0-255 values
# pass. Values beyond this are a scaling mistake, and overflow float16 (max 65504) as soon
# as the patch embedding sums them; at ~1e19 float32's LayerNorm variance overflows too.
PIXEL_LIMIT = 1e4


@dataclasses.dataclass(frozen=True)
class DataInfo:
    path: str
    size: int  # number of images
    classes: tuple[str, ...] | None  # the dataset's classes (folders); None for tensors
    name: str = ""  # its label in reports (``--data NAME=PATH``)
    layout: str = "folder"  # "folder", "tensors", or one of ``LAYOUTS``
    samples: tuple[tuple[str, int], ...] | None = None  # (image file, label) of a folder
    # Per dataset class, the head classes whose largest logit is its logit; None: the
    # head's classes are the dataset's.
    class_groups: tuple[tuple[int, ...], ...] | None = None
    border: int = 0  # pixels cropped off each side before the model's transform


def _is_folder(path: str) -> bool:
    return os.path.isdir(path)


def _folder(path: str, transform=None) -> CheckedImageFolder:
    try:
        return CheckedImageFolder(path, transform=transform)
    except (FileNotFoundError, RuntimeError) as err:  # no class folder, no image in them
        raise CheckpointError(f"dataset {path}: {one_line(err)}") from None


def verify_images(paths: Iterable[str], progress: Callable[[Iterable], Iterable] = iter
                  ) -> None:
    """PIL's ``verify()`` on every image; a ``CheckpointError`` names the first bad one."""
    from PIL import Image

    for path in progress(paths):
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:
            reason = one_line(err) or type(err).__name__
            raise CheckpointError(f"image {path}: not a readable image ({reason}); fix or "
                                  f"remove it") from None


def inspect_dataset(path: str, arch: ArchInfo, num_classes: int,
                    progress: Callable[[Iterable], Iterable] = iter) -> DataInfo:
    """Check a dataset against the model and the heads' class count, cheaply."""
    if not os.path.exists(path):
        raise CheckpointError(f"dataset not found: {path}")
    if _is_folder(path):
        folder = _folder(path)
        if len(folder.classes) != num_classes:
            raise CheckpointError(
                f"dataset {path}: {len(folder.classes)} class folders, but the heads score "
                f"{num_classes} classes; expected {num_classes} class folders")
        verify_images([p for p, _ in folder.samples], progress)
        return DataInfo(path, len(folder), tuple(folder.classes))
    images, labels = _tensors(path)
    expected = (arch.channels, *arch.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise CheckpointError(
            f"dataset {path}: images are {list(images.shape)}, but {arch.name} expects "
            f"[N, {', '.join(map(str, expected))}]")
    if not images.is_floating_point():
        raise CheckpointError(
            f"dataset {path}: images are {images.dtype}; expected floating-point images "
            f"normalised as the model expects (e.g. open_clip's mean and std)")
    if labels.shape != images.shape[:1]:
        raise CheckpointError(f"dataset {path}: labels {list(labels.shape)} for "
                              f"{images.shape[0]} images; expected [{images.shape[0]}]")
    if len(labels) == 0:
        raise CheckpointError(f"dataset {path} is empty")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise CheckpointError(f"dataset {path}: labels are {labels.dtype}; expected integers")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise CheckpointError(
            f"dataset {path}: labels span [{low}, {high}], but the heads score {num_classes} "
            f"classes; expected labels in [0, {num_classes - 1}]")
    if not bool(torch.isfinite(images).all()):
        raise CheckpointError(f"dataset {path}: images contain NaN or infinity")
    peak = float(images.abs().max())
    if peak > PIXEL_LIMIT:
        raise CheckpointError(
            f"dataset {path}: pixel values reach {peak:.3g}; expected images normalised as "
            f"the model expects (open_clip's mean and std give values within about ±3; "
            f"values beyond ±{PIXEL_LIMIT:g} are a scaling mistake and overflow float16)")
    return DataInfo(path, len(labels), None)


def _tensors(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    obj = load_tensors(path, "dataset")
    if not (isinstance(obj, Mapping) and isinstance(obj.get("images"), torch.Tensor)
            and isinstance(obj.get("labels"), torch.Tensor)):
        raise CheckpointError(f"dataset {path}: expected a dict with 'images' [N, 3, H, W] "
                              f"and 'labels' [N] tensors")
    return obj["images"], obj["labels"]


def load_dataset(path: str, transform=None) -> Dataset:
    """An ImageFolder directory, or a tensor file {"images": [N,3,H,W], "labels": [N]}."""
    if not os.path.exists(path):
        raise CheckpointError(f"dataset not found: {path}")
    if _is_folder(path):
        dataset = _folder(path, transform)
    else:
        images, labels = _tensors(path)
        if images.dim() != 4 or labels.shape != images.shape[:1]:
            raise CheckpointError(f"dataset {path}: images {tuple(images.shape)} and labels "
                                  f"{tuple(labels.shape)} do not match")
        dataset = torch.utils.data.TensorDataset(images.float(), labels.long())
    if len(dataset) == 0:
        raise CheckpointError(f"dataset {path} is empty")
    return dataset


# ------------------------------------------------------------- decoding during the run


@dataclasses.dataclass(frozen=True)
class BadImage:
    """An image that failed to load: returned instead of raising, so that it crosses the
    DataLoader's worker processes as data, not as a multi-line re-raised traceback."""

    path: str
    reason: str

    def error(self) -> CheckpointError:
        return CheckpointError(f"image {self.path}: cannot be decoded ({self.reason}); fix or "
                               f"remove it")


class CheckedImageFolder(ImageFolder):
    """``ImageFolder`` whose unreadable images come back as ``BadImage``."""

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except Exception as err:
            return BadImage(self.samples[index][0], one_line(err) or type(err).__name__)


def collate(batch: list) -> object:
    """``default_collate``, or the first ``BadImage`` of the batch."""
    for sample in batch:
        if isinstance(sample, BadImage):
            return sample
    return default_collate(batch)


def checked_batches(loader: Iterable) -> Iterator:
    """The loader's batches; a ``BadImage`` becomes its one-line ``CheckpointError``."""
    for batch in loader:
        if isinstance(batch, BadImage):
            raise batch.error()
        yield batch


# ------------------------------------------------------------ benchmark layouts

#: The dataset names ``--data NAME=PATH`` reads in their official download's layout.
LAYOUTS = ("imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch",
           "objectnet")
IMAGENET_CLASSES = 1000
OBJECTNET_BORDER = 2
# Subfolders the official archives unpack to; ``PATH`` may be the folder above them.
_SUBFOLDERS = {"imagenet": ("val",), "imagenet-v2": (
    "imagenetv2-matched-frequency-format-val", "imagenetv2-threshold0.7-format-val",
    "imagenetv2-top-images-format-val"), "imagenet-r": ("imagenet-r",),
    "imagenet-a": ("imagenet-a",), "imagenet-sketch": ("sketch",),
    "objectnet": ("objectnet-1.0",)}
OBJECTNET_MAPPINGS = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                      "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """One ``--data`` value: its report label, path, and layout (``LAYOUTS``, or
    "folder" for an ImageFolder or tensor file under any other label)."""

    name: str
    path: str

    @property
    def layout(self) -> str:
        return self.name if self.name in LAYOUTS else "folder"


def _subfolders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _root(spec: DataSpec) -> str:
    """The folder holding the layout's class folders (or ObjectNet's images/ and
    mappings/): ``spec.path`` or the subfolder its archive unpacks to."""
    for sub in _SUBFOLDERS.get(spec.layout, ()):
        if os.path.isdir(os.path.join(spec.path, sub)):
            return os.path.join(spec.path, sub)
    return spec.path


def _scan(root: str, labels: Mapping[str, int], what: str) -> tuple[tuple[str, int], ...]:
    """(image, label) of every image in the class folders ``labels`` names, in
    ``ImageFolder``'s order (folders, then files, sorted)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    present = sorted(f for f in labels if os.path.isdir(os.path.join(root, f)))
    try:
        samples = make_dataset(root, {f: labels[f] for f in present}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise CheckpointError(f"{what}: {one_line(err)}") from None
    if not samples:
        raise CheckpointError(f"{what}: no images in its class folders")
    return tuple((p, int(y)) for p, y in samples)


def _wnid_folders(root: str, allowed: tuple[str, ...], spec: DataSpec, kind: str
                  ) -> list[str]:
    folders = _subfolders(root)
    if not folders:
        flat = any(e.is_file() for e in os.scandir(root))
        hint = (" (a flat folder of images: sort them into one folder per class, e.g. with "
                "ImageNet's valprep.sh)" if flat else "")
        raise CheckpointError(f"dataset {spec.name}={spec.path}: no class folders{hint}; "
                              f"expected {kind} folders named by WordNet id (n01440764, ...)")
    known = set(allowed)
    wrong = [f for f in folders if f not in known]
    if wrong:
        raise CheckpointError(f"dataset {spec.name}={spec.path}: folder '{wrong[0]}' is not "
                              f"one of the {len(allowed)} {kind} classes (WordNet ids such as "
                              f"{allowed[0]}); is this {spec.name}?")
    return folders


def _read_layout(spec: DataSpec) -> DataInfo:
    """A benchmark's images, labels and class projection, read from its layout."""
    from .imagenet_wnids import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS

    if not os.path.isdir(spec.path):
        raise CheckpointError(f"dataset {spec.name}={spec.path}: not a directory; expected "
                              f"the {spec.name} folder of its official download")
    root, what = _root(spec), f"dataset {spec.name}={spec.path}"
    if spec.layout in ("imagenet", "imagenet-sketch"):
        _wnid_folders(root, IMAGENET_WNIDS, spec, "ImageNet")
        labels = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
        return DataInfo(spec.path, 0, IMAGENET_WNIDS, spec.name, spec.layout,
                        _scan(root, labels, what))
    if spec.layout == "imagenet-v2":
        folders = _subfolders(root)
        wrong = [f for f in folders if not (f.isdigit() and int(f) < IMAGENET_CLASSES)]
        if not folders or wrong:
            found = f"folder '{wrong[0]}'" if wrong else "no class folders"
            raise CheckpointError(f"{what}: {found}; expected ImageNet-V2's folders 0 ... 999 "
                                  f"(each the ImageNet label of its images)")
        labels = {f: int(f) for f in folders}
        return DataInfo(spec.path, 0, IMAGENET_WNIDS, spec.name, spec.layout,
                        _scan(root, labels, what))
    if spec.layout in ("imagenet-r", "imagenet-a"):
        subset = IMAGENET_R_WNIDS if spec.layout == "imagenet-r" else IMAGENET_A_WNIDS
        _wnid_folders(root, subset, spec, spec.name)
        index = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
        return DataInfo(spec.path, 0, subset, spec.name, spec.layout,
                        _scan(root, {w: i for i, w in enumerate(subset)}, what),
                        class_groups=tuple((index[w],) for w in subset))
    return _read_objectnet(spec, root, what)


def _read_objectnet(spec: DataSpec, root: str, what: str) -> DataInfo:
    """ObjectNet: the classes its own mapping files (``mappings/``) map to ImageNet
    classes, each scored by the largest logit among its ImageNet classes; the images of
    its other classes are left out, as the robust fine-tuning papers do."""
    import json

    images, mappings = os.path.join(root, "images"), os.path.join(root, "mappings")
    for folder in (images, mappings):
        if not os.path.isdir(folder):
            raise CheckpointError(f"{what}: no {os.path.basename(folder)}/ folder; expected "
                                  f"objectnet-1.0/ with images/ and mappings/")
    for name in OBJECTNET_MAPPINGS:
        if not os.path.isfile(os.path.join(mappings, name)):
            raise CheckpointError(f"{what}: mappings/{name} is missing (ObjectNet ships it)")
    try:
        def read_json(name):
            with open(os.path.join(mappings, name), encoding="utf-8") as f:
                return json.load(f)

        folder_of = {label: folder for folder, label in
                     read_json("folder_to_objectnet_label.json").items()}
        to_imagenet = read_json("objectnet_to_imagenet_1k.json")
        pytorch_of = {int(i): int(p) for p, i in
                      read_json("pytorch_to_imagenet_2012_id.json").items()}
        with open(os.path.join(mappings, "imagenet_to_label_2012_v2"), encoding="utf-8") as f:
            imagenet_index = {line.strip(): pytorch_of[i] for i, line in enumerate(f)}
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError, TypeError,
            AttributeError) as err:
        raise CheckpointError(f"{what}: unreadable mapping files ({one_line(err)})") from None
    groups: dict[str, tuple[int, ...]] = {}
    for label, names in to_imagenet.items():
        if label not in folder_of:
            raise CheckpointError(f"{what}: mappings/objectnet_to_imagenet_1k.json names "
                                  f"'{label}', which folder_to_objectnet_label.json lacks")
        missing = [n for n in names.split("; ") if n not in imagenet_index]
        if missing:
            raise CheckpointError(f"{what}: ImageNet class '{missing[0]}' (for '{label}') is "
                                  f"not in mappings/imagenet_to_label_2012_v2")
        groups[folder_of[label]] = tuple(imagenet_index[n] for n in names.split("; "))
    known = set(folder_of.values())
    wrong = [f for f in _subfolders(images) if f not in known]
    if wrong:
        raise CheckpointError(f"{what}: images/{wrong[0]} is not an ObjectNet class folder "
                              f"of mappings/folder_to_objectnet_label.json")
    classes = tuple(sorted(groups))
    samples = _scan(images, {c: i for i, c in enumerate(classes)}, what)
    return DataInfo(spec.path, 0, classes, spec.name, spec.layout, samples,
                    class_groups=tuple(groups[c] for c in classes), border=OBJECTNET_BORDER)


def _read_folder(spec: DataSpec) -> DataInfo:
    """An ImageFolder: class folders sorted by name, or, when every folder name is a
    number, each folder's number as its label (so 10 is label 10, not label 2)."""
    folders = _subfolders(spec.path)
    what = f"dataset {spec.path}"
    if not folders:
        raise CheckpointError(f"{what}: no class folders; expected one folder of images per "
                              f"class")
    if all(f.isdigit() for f in folders):
        labels = {f: int(f) for f in folders}
    else:
        labels = {f: i for i, f in enumerate(folders)}
    return DataInfo(spec.path, 0, tuple(folders), spec.name, "folder",
                    _scan(spec.path, labels, what))


def head_classes(info: DataInfo) -> int:
    """The class count the heads must score for this dataset."""
    if info.layout in LAYOUTS:
        return IMAGENET_CLASSES
    if info.layout == "folder":
        return max(y for _, y in info.samples) + 1 if _numeric(info) else len(info.classes)
    raise AssertionError(info.layout)


def _numeric(info: DataInfo) -> bool:
    return all(c.isdigit() for c in info.classes)


def inspect_data(spec: DataSpec, arch: ArchInfo, num_classes: int,
                 progress: Callable[[Iterable], Iterable] = iter) -> DataInfo:
    """Check one ``--data`` value against the model and the heads' class count, cheaply:
    its layout, class folders and labels, and every image (PIL's ``verify``)."""
    if not os.path.exists(spec.path):
        raise CheckpointError(f"dataset not found: {spec.path}")
    if spec.layout == "folder" and not _is_folder(spec.path):
        info = inspect_dataset(spec.path, arch, num_classes, progress)
        return dataclasses.replace(info, name=spec.name, layout="tensors")
    info = _read_layout(spec) if spec.layout != "folder" else _read_folder(spec)
    need = head_classes(info)
    if spec.layout == "folder" and _numeric(info):
        if need > num_classes:
            raise CheckpointError(f"dataset {spec.path}: numbered class folders reach "
                                  f"{need - 1}, but the heads score {num_classes} classes")
    elif need != num_classes and spec.layout == "folder":
        raise CheckpointError(
            f"dataset {spec.path}: {need} class folders, but the heads score {num_classes} "
            f"classes; expected {num_classes} class folders")
    elif need != num_classes:
        raise CheckpointError(f"dataset {spec.name}={spec.path}: {spec.name} is scored with "
                              f"ImageNet's {need} classes, but the heads score {num_classes}; "
                              f"expected [{need}, D] heads")
    verify_images([p for p, _ in info.samples], progress)
    return dataclasses.replace(info, size=len(info.samples))


class CheckedSamples(Dataset):
    """(image, label) pairs of image files; unreadable images come back as ``BadImage``.
    ``border``: pixels cropped off each side before ``transform``."""

    def __init__(self, samples, transform=None, border: int = 0) -> None:
        self.samples, self.transform, self.border = list(samples), transform, border

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[index]
        try:
            image = default_loader(path)
            if self.border:
                width, height = image.size
                image = image.crop((self.border, self.border, width - self.border,
                                    height - self.border))
            return (self.transform(image) if self.transform else image), label
        except Exception as err:
            return BadImage(path, one_line(err) or type(err).__name__)


def load_data(info: DataInfo, transform=None) -> Dataset:
    """The dataset ``inspect_data`` checked, its images through ``transform``."""
    if info.samples is None:
        return load_dataset(info.path, transform)
    return CheckedSamples(info.samples, transform, info.border)
