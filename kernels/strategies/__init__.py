"""The strategies of ``interp_matmul``, one module each, registered in this order.

Each module defines ``STRATEGY``, a ``registry.Strategy``: adding a strategy is one module
here and one entry in ``MODULES`` (the order is the registry's: ties of the cost model go
to the earlier one, and the compile gate's table follows the kernel modules' names).
Imports the kernel modules of ``kernels/`` and nothing of dawin_fast.
"""

from __future__ import annotations

from .. import registry
from . import combine, epilogue, rowscaled, swapab, wstat

MODULES = (combine, rowscaled, swapab, epilogue, wstat)

for _module in MODULES:
    registry.register(_module.STRATEGY)
