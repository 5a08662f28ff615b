"""``DaWin.calibrate`` takes the batches a DataLoader gives: tensors, (images, labels), dicts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dawin_fast import DaWin, DaWinClassifier, DaWinMultiTask, DaWinViT
from tests.models import tiny_open_clip_visual

pytestmark = pytest.mark.usefixtures("torch_backend")  # tests/conftest.py


@pytest.fixture(scope="module")
def classifier():
    visuals = [tiny_open_clip_visual(s) for s in range(2)]
    gen = torch.Generator().manual_seed(0)
    return DaWinClassifier(DaWinViT.from_open_clip(visuals),
                           [torch.randn(4, 12, generator=gen) * 3 for _ in range(2)])


IMAGES = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))
LABELS = torch.arange(12) % 4


def _batches(kind: str):
    if kind == "tensors":
        return list(IMAGES.split(4))
    if kind == "(images, labels) DataLoader":
        return DataLoader(TensorDataset(IMAGES, LABELS), batch_size=4)
    if kind == "tuples":
        return [(x, y) for x, y in zip(IMAGES.split(4), LABELS.split(4), strict=True)]
    if kind == "dicts":
        return [{"images": x, "labels": y} for x, y in zip(IMAGES.split(4), LABELS.split(4),
                                                           strict=True)]
    if kind == "pixel_values dicts":
        return [{"pixel_values": x} for x in IMAGES.split(4)]
    raise AssertionError(kind)


KINDS = ["tensors", "(images, labels) DataLoader", "tuples", "dicts", "pixel_values dicts"]


@pytest.mark.parametrize("kind", KINDS)
def test_calibrate_accepts_common_batch_shapes(classifier, kind):
    reference = DaWin(classifier, n_clusters=2).calibrate(_batches("tensors"))
    dawin = DaWin(classifier, n_clusters=2).calibrate(_batches(kind))
    assert dawin.mixture.means_.tolist() == reference.mixture.means_.tolist()
    torch.testing.assert_close(dawin.predict(IMAGES[:5]), reference.predict(IMAGES[:5]))


@pytest.mark.parametrize("batch, fragment", [
    ("not images", "batch 0 is a str"),
    ({"pixels": IMAGES[:4]}, "batch 0 is a dict with keys ['pixels']"),
    ((), "batch 0 is a tuple"),
])
def test_calibrate_says_what_a_batch_must_be(classifier, batch, fragment):
    with pytest.raises(TypeError, match="expected an image tensor") as info:
        DaWin(classifier).calibrate([batch])
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_multitask_calibrate_accepts_loader_batches():
    encoder = DaWinViT.from_open_clip([tiny_open_clip_visual(s) for s in range(3)])  # 2 tasks
    heads = [torch.randn(4, 12), torch.randn(4, 12)]
    reference = DaWinMultiTask(encoder, heads, n_clusters=2).calibrate(_batches("tensors"))
    dawin = DaWinMultiTask(encoder, heads, n_clusters=2).calibrate(
        _batches("(images, labels) DataLoader"))
    assert dawin.mixtures[None].means_.tolist() == reference.mixtures[None].means_.tolist()


def test_predict_names_a_non_tensor_batch(classifier):
    with pytest.raises(TypeError, match=r"DaWin.predict: images must be a tensor \[B, \.\.\.\], "
                                        r"got tuple"):
        DaWin(classifier).predict((IMAGES, LABELS))
