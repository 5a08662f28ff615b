"""The Gluon names the Hopper kernels use, imported once (``swapab_gluon``, ``wstat_gluon``).

Gluon ships with Triton >= 3.5. Without it ``GLUON_AVAILABLE`` is False, the names are None
and the launchers report the kernels unavailable.
"""

from __future__ import annotations

import torch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    GLUON_AVAILABLE = True
    #: wgmma's 16-bit operand types, by torch dtype.
    GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}
    #: The CTA-wide barrier: gl.barrier on Triton 3.8, gl.thread_barrier on 3.6.
    cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
except ImportError:  # a Triton without Gluon (< 3.5)
    GLUON_AVAILABLE = False
    GL_DTYPES = {}
    gluon = gl = fence_async_shared = mbarrier = tma = warpgroup_mma = None
    warpgroup_mma_wait = TensorDescriptor = cta_barrier = None
