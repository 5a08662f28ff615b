"""The GPU architectures the kernels are built for, and the running device's limits.

Three targets (``ARCHES``): Hopper (sm_90a: H100, H200), Ada (sm_89: RTX 40, L4, L40S)
and Ampere (sm_80: A100). Each has its own largest dynamic shared memory per block
(cudaDevAttrMaxSharedMemoryPerBlockOptin); configs are filtered by the running device's
real limit (``shared_memory_limit``), queried once per device, not by the H100's.

Only Hopper has wgmma and TMA: the Gluon kernel and TMA descriptors run on sm_90 only
(``hopper``); elsewhere the dots lower to mma.sync and the loads to ``cp.async``.

CPU tensors (the compile gate's stand-in calls, the interpreter) have no device: they get
the limit of ``assumed()``, Hopper unless the compile gate assumes another target
(``assume``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Arch:
    """One compile target: its PTX name, compute capability and per-block limit."""

    name: str
    capability: tuple[int, int]
    smem_limit: int  #: bytes of dynamic shared memory one block may opt into
    wgmma: bool  #: Hopper's asynchronous MMA (and TMA); else mma.sync

    @property
    def gate_target(self) -> tuple[str, int, int]:
        """Triton's ``GPUTarget`` arguments (backend, arch, warp size)."""
        return ("cuda", self.capability[0] * 10 + self.capability[1], 32)


HOPPER = Arch("sm_90a", (9, 0), 232448, True)  # H100 / H200: 227 KiB
ADA = Arch("sm_89", (8, 9), 101376, False)  # RTX 40, L4, L40S: 99 KiB
AMPERE = Arch("sm_80", (8, 0), 166912, False)  # A100: 163 KiB
ARCHES = {a.name: a for a in (HOPPER, AMPERE, ADA)}

_assumed: Arch = HOPPER


def assume(arch: Arch) -> None:
    """The target CPU stand-in tensors stand for (the compile gate's worker sets it)."""
    global _assumed
    _assumed = arch


def assumed() -> Arch:
    return _assumed


def _device_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


@functools.cache
def _cuda_limits(index: int) -> tuple[int, tuple[int, int], str]:
    """(shared memory per block, capability, name) of a CUDA device, queried once."""
    props = torch.cuda.get_device_properties(index)
    return (int(props.shared_memory_per_block_optin), (props.major, props.minor),
            str(props.name))


def shared_memory_limit(device: torch.device) -> int:
    """Bytes of shared memory one block may use on ``device`` (CPU: ``assumed()``'s)."""
    if device.type != "cuda":
        return _assumed.smem_limit
    return _cuda_limits(_device_index(device))[0]


def capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of ``device`` (CPU: ``assumed()``'s)."""
    if device.type != "cuda":
        return _assumed.capability
    return _cuda_limits(_device_index(device))[1]


def device_name(device: torch.device) -> str:
    """The CUDA device's name (the measured dispatch's cache key), or "cpu"."""
    if device.type != "cuda":
        return "cpu"
    return _cuda_limits(_device_index(device))[2]


def hopper(device: torch.device) -> bool:
    """Whether wgmma and TMA exist there: sm_90 only (sm_100 has neither wgmma)."""
    return capability(device)[0] == 9


def forget_devices() -> None:
    """Drop the queried device properties (tests that fake them)."""
    _cuda_limits.cache_clear()
