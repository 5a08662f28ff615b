"""Test setup: without a GPU, Triton kernels run through the interpreter.

TRITON_INTERPRET must be set before the kernels are decorated (first import of
dawin_fast), so it is set here, before any test module imports the package.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

settings.register_profile("default", deadline=None, print_blob=True)
settings.load_profile("default")

import pytest  # noqa: E402


def _devices():
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
