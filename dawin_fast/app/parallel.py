"""The command line under ``torchrun``: one process per device, rank 0 speaks.

``torchrun --nproc-per-node N -m dawin_fast.app.cli eval ...`` starts N copies of the
command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
set. ``session`` turns that environment into an initialised default process group (NCCL
for CUDA devices, gloo for the CPU) and each rank's device (``cuda:LOCAL_RANK``), and
destroys the group at the end. Without torchrun's environment it is the one process it
always was. Progress bars, the table, files and error messages come from rank 0 only
(``is_main``); an error on any rank reaches rank 0 through ``dawin_fast.distributed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from .. import distributed
from ..distributed import RankFailure, RankTimeout
from .errors import UserError


@dataclasses.dataclass(frozen=True)
class Session:
    rank: int
    world_size: int
    device: str  #: this rank's device (cuda:LOCAL_RANK under torchrun with CUDA)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a process that torchrun started (its rank environment is set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main() -> bool:
    """Rank 0, or no torchrun: the process that prints and writes. Works before and after
    the process group exists (it reads torchrun's environment)."""
    return int(os.environ.get("RANK", "0")) == 0


# How long a rank waits in a collective for the others (--dist-timeout). gloo's own
# default, 30 minutes, leaves a job hanging that long when a rank stops. A healthy run
# waits far less (an estimate, not measured on large runs): shards differ by at most one
# batch, and the others wait while rank 0 alone fits the mixture.
DEFAULT_TIMEOUT_S = 600.0


@contextlib.contextmanager
def session(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Session]:
    """This process's place in the run: a process group under torchrun, else one process.

    ``device``: the device the user asked for ("cpu", "cuda"); under torchrun with CUDA
    each rank takes ``cuda:LOCAL_RANK`` (a device index of the user's is then an error).
    ``timeout_s``: the process group's collective timeout; a rank that stops answering
    makes the others raise a ``RankTimeout`` naming it after that long (gloo; with NCCL,
    its watchdog ends the processes instead).
    """
    if not launched():
        yield Session(0, 1, device)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if device.startswith("cuda"):
        if device != "cuda":
            raise UserError(f"--device: under torchrun each rank uses cuda:LOCAL_RANK; pass "
                            f"--device cuda, not {device!r}")
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but {torch.cuda.device_count()} GPUs are "
                            f"visible: start at most that many processes per node")
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield Session(rank, world, device)
        distributed.barrier()  # every rank is done with every collective before teardown
    except RankTimeout:  # a rank is silent: waiting for it again would time out again
        raise
    except RankFailure:  # raised on every rank: they are in step
        distributed.barrier()
        raise
    finally:
        dist.destroy_process_group()
