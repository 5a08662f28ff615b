"""The Python API's edges: empty batches, the caller's image shape in errors, meta tensors.

On the PyTorch path (the pipeline's logic; the kernels have their own tests).
"""

from __future__ import annotations

import pytest
import torch

from dawin_fast import DaWin, DaWinMultiTask, DaWinViT, interp_linear, task_vectors
from tests.test_pipeline import NUM_CLASSES, images, setup

pytestmark = pytest.mark.usefixtures("torch_backend")  # tests/conftest.py


@pytest.mark.parametrize("mode", ["mixture", "per_sample", 0.3, [0.2, 0.8]])
@pytest.mark.parametrize("calibrated", [False, True])
def test_predict_on_an_empty_batch_is_empty_logits(mode, calibrated):
    _, _, classifier = setup(2)
    dawin = DaWin(classifier, mode=mode, n_clusters=2, offset_adjustment=calibrated)
    if calibrated:
        dawin.calibrate([images(8, seed=1)])
    empty = torch.empty(0, 3, 16, 16)
    assert dawin.predict(empty).shape == (0, NUM_CLASSES)
    out = dawin.predict(empty, return_details=True)
    assert out.logits.shape == (0, NUM_CLASSES)
    assert out.coefficients.shape == (0, 2) and out.applied.shape == (0, 2)


@pytest.mark.parametrize("mode", ["mixture", "per_sample"])
def test_multitask_predict_on_an_empty_batch(mode):
    visuals, heads, _ = setup(3)
    encoder = DaWinViT.from_open_clip(task_vectors(visuals[0], visuals[1:]))
    dawin = DaWinMultiTask(encoder, heads[1:], mode=mode, n_clusters=2)
    assert dawin.predict(torch.empty(0, 3, 16, 16), task=1).shape == (0, NUM_CLASSES)


@pytest.mark.parametrize("mode", ["mixture", "per_sample", 0.3])
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 3, 16), (3, 16, 16)])
def test_a_wrong_image_size_reports_the_callers_shape(mode, shape):
    """The expert pass stacks M copies: [2,3,64,64] was reported as 'got [4, 3, 64, 64]'."""
    _, _, classifier = setup(2)
    dawin = DaWin(classifier, mode=mode)
    expected = rf"images must be \[B, 3, 16, 16\], got \[{', '.join(map(str, shape))}\]"
    with pytest.raises(ValueError, match=expected):
        dawin.predict(torch.randn(*shape))
    with pytest.raises(ValueError, match=expected):
        dawin.calibrate([torch.randn(*shape)])


def test_multitask_reports_the_callers_shape():
    visuals, heads, _ = setup(3)
    encoder = DaWinViT.from_open_clip(task_vectors(visuals[0], visuals[1:]))
    dawin = DaWinMultiTask(encoder, heads[1:])
    with pytest.raises(ValueError, match=r"got \[2, 3, 64, 64\]"):
        dawin.predict(torch.randn(2, 3, 64, 64), task=0)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("offsets_dtype", [torch.int32, torch.int64])
def test_interp_linear_on_meta_tensors_propagates_shapes(bias, offsets_dtype):
    """Meta tensors have no values: no value check, only the output's shape and dtype."""
    meta = torch.device("meta")
    x = torch.empty(2, 5, 8, device=meta, dtype=torch.float16)
    weight = torch.empty(3, 4, 8, device=meta, dtype=torch.float16)
    coeffs = torch.empty(2, 3, device=meta)
    offsets = torch.empty(3, device=meta, dtype=offsets_dtype)
    b = torch.empty(3, 4, device=meta, dtype=torch.float16) if bias else None
    y = interp_linear(x, weight, coeffs, offsets, b)
    assert y.is_meta and y.shape == (2, 5, 4) and y.dtype == torch.float16
    with pytest.raises(ValueError, match="weight"):  # shape rules still hold
        interp_linear(x, torch.empty(3, 4, 7, device=meta, dtype=x.dtype), coeffs, offsets)
