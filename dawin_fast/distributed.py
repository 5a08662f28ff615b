"""Data parallelism over ``torch.distributed``: shards, gathers in dataset order, shared errors.

A thin layer over an initialised default process group (``torchrun`` then
``torch.distributed.init_process_group``; NCCL on GPUs, gloo on CPUs). Without one, or with
a world size of 1, every function here is the one-process identity, so callers need no
branches: ``DaWin.calibrate`` uses it and works unchanged in one process and under
``torchrun``.

DaWin is not embarrassingly parallel: the mixture and the offset statistics are fitted on
the whole calibration set. The scheme:

* **Shards** (``shard_range``, ``shard``): the dataset is cut into global batches of
  ``batch_size`` samples in dataset order (the last one may be short) and each rank takes
  a contiguous run of whole batches, ranks in order. Shards are disjoint, cover every
  sample once (no padding, unlike ``DistributedSampler``), and concatenated in rank order
  they are the dataset order. Every batch holds the same samples whatever the world size:
  a sample's logits can depend on its batch mates in the last bits (CPU and GPU matmul
  and attention kernels pick their blocking by shape), so this is what makes results
  bit-identical across world sizes.
* **Gathers** (``gather_rows``): per-sample rows of every rank, concatenated in rank order
  (= dataset order), on every rank or on one.
* **One fit** (``run_on_main``): rank 0 runs the fit on the gathered input and broadcasts
  its result. Every rank fitting the same input would cost the same wall time; fitting
  once makes the fitted parameters one object by construction, the same bits on every
  rank even on a cluster whose hosts' NumPy builds pick other SIMD paths for exp/log, and
  only rank 0 needs the N x M input (a gather, not an all-gather).
* **Shared errors** (``shared_errors``, ``RankFailure``): an exception on one rank inside
  a shared block is raised on every rank, with that rank's one-line message, instead of
  leaving the others waiting in the next collective.
* **Silent ranks** (``barrier``, ``RankTimeout``): a rank that stops answering (stopped,
  hung, killed without an error) makes the others' next collective time out after the
  process group's ``timeout`` (``init_process_group(..., timeout=...)``; gloo's default is
  30 minutes). Every collective here counts itself in the group's store first, so the
  ranks still alive can tell which rank never arrived: they raise a ``RankTimeout``
  naming it instead of gloo's "Timed out waiting 5000ms for recv operation".
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "RankFailure",
    "RankTimeout",
    "RankValueError",
    "active",
    "barrier",
    "check_distinct_shards",
    "gather_objects",
    "gather_rows",
    "one_line",
    "rank",
    "run_on_main",
    "shard",
    "shard_range",
    "shared_errors",
    "world_size",
]

_T = TypeVar("_T")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    """True under an initialised default process group of more than one rank."""
    return _initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """The default group's size (1 without one)."""
    return dist.get_world_size() if _initialized() else 1


def shard_range(num_samples: int, batch_size: int, rank: int | None = None,
                world_size: int | None = None) -> range:
    """The samples of ``rank``'s shard: a contiguous run of whole global batches.

    Global batch b is samples [b·batch_size, (b+1)·batch_size) of the dataset (the last
    one may be short); rank r takes batches [⌊r·nb/W⌋, ⌊(r+1)·nb/W⌋) of the nb batches, so
    ranks differ by at most one batch, and ranks beyond the batch count get an empty
    range. Defaults: this process's rank and the group's world size.
    """
    world = (dist.get_world_size() if _initialized() else 1) if world_size is None \
        else world_size
    rank = (dist.get_rank() if _initialized() else 0) if rank is None else rank
    for name, value, low in (("num_samples", num_samples, 0), ("batch_size", batch_size, 1),
                             ("world_size", world, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"shard_range: {name} must be an integer >= {low}, got {value!r}")
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"shard_range: rank must be in [0, {world}), got {rank!r}")
    batches = -(-num_samples // batch_size)
    first, last = rank * batches // world, (rank + 1) * batches // world
    return range(min(first * batch_size, num_samples), min(last * batch_size, num_samples))


def shard(dataset: torch.utils.data.Dataset, batch_size: int) -> torch.utils.data.Subset:
    """This rank's shard of ``dataset`` (see ``shard_range``).

    Load it with ``DataLoader(shard(dataset, B), batch_size=B)`` (no shuffling, no
    ``DistributedSampler``, which pads by repeating samples and interleaves the ranks):
    its batches are then exactly the global batches of the one-process run.
    """
    return torch.utils.data.Subset(dataset, shard_range(len(dataset), batch_size))


def _comm_device() -> torch.device:
    """Where tensor collectives run: the current GPU under NCCL, the CPU otherwise."""
    if str(dist.get_backend()) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_objects(obj: _T) -> list[_T]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process). Small objects only."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    _collective(dist.all_gather_object, out, obj)
    return out


def barrier() -> None:
    """``torch.distributed.barrier`` with a ``RankTimeout`` naming a silent rank."""
    if _initialized():
        _collective(dist.barrier)


def gather_rows(tensor: torch.Tensor, dst: int | None = None) -> torch.Tensor | None:
    """Every rank's rows concatenated in rank order: [Σ_r n_r, ...].

    Ranks may hold different numbers of rows (none at all, too); the other dims and the
    dtype must agree (a ``ValueError`` on every rank otherwise). ``dst=None``: every rank
    gets the result; ``dst=r``: rank r does, the others get None. In one process the
    tensor itself. The result is on ``tensor``'s device.
    """
    if not active():
        return tensor
    meta = gather_objects((int(tensor.shape[0]) if tensor.dim() else -1,
                           tuple(tensor.shape[1:]), str(tensor.dtype)))
    if any(n < 0 for n, _, _ in meta) or len({(s, d) for _, s, d in meta}) > 1:
        raise ValueError("gather_rows: every rank needs a tensor [n, ...] of the same trailing "
                         f"shape and dtype, got (rows, shape, dtype) per rank: {meta}")
    sizes = [n for n, _, _ in meta]
    trailing = tuple(tensor.shape[1:])
    width = max(sizes)
    if width == 0:
        out = tensor.new_empty((0, *trailing))
        return out if dst is None or dist.get_rank() == dst else None
    device = _comm_device()
    padded = torch.zeros((width, *trailing), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.detach().to(device)
    if dst is None:
        parts = [torch.empty_like(padded) for _ in sizes]
        _collective(dist.all_gather, parts, padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes] if dist.get_rank() == dst else None
        _collective(dist.gather, padded, parts, dst=dst)
        if parts is None:
            return None
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(tensor.device)


def check_distinct_shards(tensor: torch.Tensor, what: str) -> None:
    """ValueError on every rank if every rank holds the same non-empty rows.

    Catches the likeliest misuse: the whole set passed on each rank instead of its shard,
    which would fit on W copies of the data and look right.
    """
    if not active():
        return
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest() \
        if data.numel() else ""
    digests = gather_objects((int(data.shape[0]), digest))
    if digests[0][0] > 0 and len(set(digests)) == 1:
        raise ValueError(f"{what}: every rank passed the same {digests[0][0]} samples; under "
                         f"a process group each rank passes its own shard "
                         f"(dawin_fast.distributed.shard)")


class RankFailure(RuntimeError):
    """An exception raised on one rank, raised again on every rank.

    ``rank``: where it happened; ``message``: its one-line message; ``user_error``: it
    was a ``ValueError`` (bad input rather than a bug). ``str()`` is "rank r: message".
    """

    def __init__(self, rank: int, message: str, user_error: bool = False) -> None:
        super().__init__(f"rank {rank}: {message}")
        self.rank, self.message, self.user_error = rank, message, user_error

    def __reduce__(self):
        return type(self), (self.rank, self.message, self.user_error)

    @staticmethod
    def of(rank: int, message: str, user_error: bool) -> RankFailure:
        """A ``RankValueError`` for user errors (so ``except ValueError`` still catches them)."""
        return (RankValueError if user_error else RankFailure)(rank, message, user_error)


class RankValueError(RankFailure, ValueError):
    """A ``RankFailure`` whose origin was a ``ValueError``."""


class RankTimeout(RankFailure):
    """A collective timed out because a rank stopped answering; raised on the ranks that
    are still alive (each on its own: there is nobody to agree with).

    ``silent``: the ranks that never reached the collective (empty when every rank reached
    it, i.e. one stopped inside it); ``rank``: the first of them (-1 if unknown);
    ``reporter``: the lowest rank still alive, the one that should print the error.
    """

    def __init__(self, silent: tuple[int, ...], collective: int, reporter: int) -> None:
        if silent:
            who = (f"rank {silent[0]}" if len(silent) == 1
                   else "ranks " + ", ".join(map(str, silent)))
            message = (f"{who} stopped answering: never reached collective #{collective} "
                       f"within the process group's timeout (stopped, hung or killed)")
        else:
            message = (f"collective #{collective} timed out: every rank reached it, one "
                       f"stopped inside it (which one is unknown)")
        RuntimeError.__init__(self, message)
        self.rank, self.message, self.user_error = (silent[0] if silent else -1), message, False
        self.silent, self.collective, self.reporter = silent, collective, reporter

    def __reduce__(self):
        return type(self), (self.silent, self.collective, self.reporter)


_ARRIVALS = "dawin_fast/collectives/"  # store key prefix: collectives each rank entered


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):  # private API; gone or no group
        return None


def _timed_out(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and bool(re.search(r"timed out|timeout", str(err),
                                                            re.IGNORECASE))


def _collective(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)``, a torch.distributed collective, counted in the store first;
    a timeout becomes a ``RankTimeout`` naming the ranks that never arrived."""
    store, me = _store(), dist.get_rank()
    arrived = None
    if store is not None:
        with contextlib.suppress(Exception):
            arrived = store.add(f"{_ARRIVALS}{me}", 1)
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        if not _timed_out(err) or arrived is None:
            raise
        try:  # add(key, 0) reads without waiting for a key that is not there yet
            counts = [store.add(f"{_ARRIVALS}{r}", 0) for r in range(dist.get_world_size())]
        except Exception:  # the store itself is gone with a silent rank
            raise err from None
        silent = tuple(r for r, n in enumerate(counts) if n < arrived)
        reporter = min(r for r in range(len(counts)) if r not in silent)
        raise RankTimeout(silent, arrived, reporter) from err


def one_line(err: BaseException) -> str:
    """One line that says what went wrong.

    A ``ValueError``'s message is meant for users and stands alone; other exceptions get
    their type name in front. A DataLoader worker's re-raised error is its original last
    line ("Caught X in DataLoader worker ... Original Traceback ... X: message").
    """
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if "Original Traceback" in text:
        return lines[-1]
    if isinstance(err, ValueError):
        return lines[0]
    return f"{type(err).__name__}: {lines[0]}"


def _status(err: BaseException) -> tuple[int, str, bool]:
    if isinstance(err, RankFailure):
        return err.rank, err.message, err.user_error
    return rank(), one_line(err), isinstance(err, ValueError)


@contextlib.contextmanager
def shared_errors() -> Iterator[None]:
    """Run a block on every rank; an exception on any rank is raised on every rank.

    Every rank finishes (or fails) the block, then they compare: if any failed, all raise
    the ``RankFailure`` of the lowest failing rank (a ``RankValueError`` when it was a
    ``ValueError``), chained to the original exception on the rank where it happened.
    Put the local work before a collective inside one, so that no rank waits forever for
    a peer that has failed. In one process: the block as is, its exceptions unchanged.
    """
    if not active():
        yield
        return
    try:
        yield
    except RankTimeout:  # a silent rank: agreeing would wait for it once more
        raise
    except Exception as err:
        _agree(err)
        raise  # not reached: _agree raises
    _agree(None)


def _agree(err: BaseException | None) -> None:
    statuses = gather_objects(None if err is None else _status(err))
    failed = sorted(s for s in statuses if s is not None)
    if failed:
        origin, message, user_error = failed[0]
        raise RankFailure.of(origin, message, user_error) from err


def run_on_main(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` run on rank 0, its result broadcast to every rank.

    The other ranks' arguments are ignored (pass None). If ``fn`` raises, every rank raises
    (a ``RankFailure``, see ``shared_errors``). The result must pickle; it arrives with
    the same bits. In one process: ``fn(*args, **kwargs)``.
    """
    if not active():
        return fn(*args, **kwargs)
    payload: list[Any] = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            payload[0] = ("ok", fn(*args, **kwargs))
        except RankTimeout:  # a silent rank: the broadcast would wait for it once more
            raise
        except Exception as err:
            error = err
            payload[0] = ("error", _status(err))
    _collective(dist.broadcast_object_list, payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise RankFailure.of(*value) from error
    return value
