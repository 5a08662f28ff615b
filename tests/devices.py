"""Run a test body on the device a backend needs: Triton runs on CUDA when there is a GPU,
else on the CPU through the interpreter; the PyTorch path runs on the CPU."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dawin_fast import use_backend

BACKENDS = ["torch", "triton"]


def backend_device(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _to(value, device):
    if isinstance(value, nn.Module):
        return copy.deepcopy(value).to(device)  # never move the caller's module
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):  # keeps dict subclasses such as Hugging Face's ModelOutput
        return type(value)(**{k: _to(v, device) for k, v in value.items()})
    return value


def run_backend(backend: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` under ``backend`` with tensors and modules moved to its
    device (modules copied); tensors in the result come back on the CPU."""
    device = backend_device(backend)
    with use_backend(backend), torch.no_grad():
        out = fn(*_to(args, device), **_to(kwargs, device))
    if isinstance(out, nn.Module):
        return out
    return _to(out, "cpu")
