"""Evaluation data: an ImageFolder directory or a tensor file, checked before any work.

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
    classes: tuple[str, ...] | None  # an ImageFolder's class folders; None for tensors


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
