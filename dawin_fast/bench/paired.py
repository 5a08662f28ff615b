"""Side-by-side timing: the methods of a comparison run in alternating rounds (A B, B A, ...),
so that a load shared by the machine slows every side alike and cancels in their ratio.

A ratio X / Y is the median over rounds of (X's time in round r) / (Y's time in round r),
reported with its interquartile range and its min-max. ``noise_note`` says when these
numbers are not to be trusted: a wide spread, or a load average above the core count.
Timing two methods one after the other instead (all of A, then all of B) lets a load that
starts or stops in between make either look several times faster than the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

#: A ratio whose interquartile range is wider than this fraction of its median is noisy.
SPREAD_LIMIT = 0.2
#: Wall milliseconds a sample lasts at least (unless one call takes longer): many time
#: slices of a scheduler that shares the cores with other processes.
SAMPLE_MS = 100.0
MAX_CALLS = 10_000


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median of per-round values, their quartiles and their extremes."""

    median: float
    q25: float
    q75: float
    low: float
    high: float
    rounds: int

    @property
    def relative_iqr(self) -> float:
        """(q75 - q25) / median: 0 for identical rounds."""
        return (self.q75 - self.q25) / self.median if self.median else float("inf")

    def format(self, digits: int = 2) -> str:
        """``1.02 (IQR 0.98–1.05, 5 rounds)``."""
        if self.rounds < 2:
            return f"{self.median:.{digits}f} (1 round: no spread)"
        return (f"{self.median:.{digits}f} (IQR {self.q25:.{digits}f}–{self.q75:.{digits}f}, "
                f"{self.rounds} rounds)")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def spread(values: Iterable[float]) -> Spread:
    """Median, quartiles (inclusive method: the quartiles of 2 values are between them)
    and extremes of ``values``."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("spread of no values")
    if len(ordered) == 1:
        q25 = q75 = ordered[0]
    else:
        q25, _, q75 = statistics.quantiles(ordered, n=4, method="inclusive")
    return Spread(statistics.median(ordered), q25, q75, ordered[0], ordered[-1], len(ordered))


def spread_from_dict(values: Mapping) -> Spread:
    """The inverse of ``Spread.as_dict`` (records stored as JSON)."""
    return Spread(**{f.name: values[f.name] for f in dataclasses.fields(Spread)})


def wall_sampler(calls: int | Mapping[Callable, int] = 1,
                 clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None) -> Callable[[Callable], float]:
    """A sampler for ``interleave``: the wall milliseconds per call of ``calls`` calls of a
    function in a row (a number, or one per function), timed as a whole by ``clock``
    (seconds); ``sync`` (e.g. a device synchronize) runs before the start and the stop.
    A sample much longer than a scheduler's time slice gives other processes their share
    of every sample alike."""

    def sample(fn: Callable[[], object]) -> float:
        count = calls[fn] if isinstance(calls, Mapping) else calls
        if sync:
            sync()
        start = clock()
        for _ in range(count):
            fn()
        if sync:
            sync()
        return (clock() - start) * 1e3 / count

    return sample


def calls_for(fn: Callable[[], object], sample_ms: float = SAMPLE_MS,
              clock: Callable[[], float] = time.perf_counter,
              sync: Callable[[], None] | None = None) -> int:
    """How many calls of ``fn`` last about ``sample_ms``, from one timed call (after the
    caller's warm-up); at least 1, at most ``MAX_CALLS``."""
    ms = wall_sampler(1, clock, sync)(fn)
    return max(1, min(MAX_CALLS, math.ceil(sample_ms / max(ms, 1e-6))))


def time_side_by_side(fns: Mapping[str, Callable[[], object]], rounds: int,
                      sample_ms: float = SAMPLE_MS,
                      clock: Callable[[], float] = time.perf_counter,
                      sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Wall milliseconds per call, per function and round: each function called once to
    warm up (compiles, caches), its calls per sample set by ``calls_for``, then
    ``interleave``."""
    for fn in fns.values():
        fn()
    calls = {fn: calls_for(fn, sample_ms, clock, sync) for fn in fns.values()}
    return interleave(fns, rounds, wall_sampler(calls, clock, sync))


def interleave(fns: Mapping[str, Callable[[], object]], rounds: int,
               sample: Callable[[Callable[[], object]], float]) -> dict[str, list[float]]:
    """Per round, every function sampled once in turn, in reverse order every other round
    (A B, B A, A B, ...: a load that grows or shrinks steadily favours neither side);
    their milliseconds, per name and round. Warm-up calls (compiling, caches) are the
    caller's, before this."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for index in range(rounds):
        for name, fn in (order if index % 2 == 0 else order[::-1]):
            samples[name].append(sample(fn))
    return samples


def ratio(samples: Mapping[str, list[float]], numerator: str, denominator: str) -> Spread:
    """The spread over rounds of numerator's time / denominator's time in the same round."""
    return spread(a / b for a, b in zip(samples[numerator], samples[denominator], strict=True))


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def core_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def noise_note(ratios: Iterable[Spread], load: float | None, cores: int) -> str | None:
    """One line saying why the ratios are noisy, or None when they are not: an
    interquartile range above ``SPREAD_LIMIT`` of the median, or a load average (the
    highest seen while measuring) above the core count."""
    ratios = list(ratios)
    reasons = []
    wide = [r for r in ratios if r.rounds > 1 and r.relative_iqr > SPREAD_LIMIT]
    if wide:
        widest = max(r.relative_iqr for r in wide)
        reasons.append(f"{len(wide)} of {len(ratios)} ratios vary by more than "
                       f"{SPREAD_LIMIT:.0%} between rounds (interquartile range up to "
                       f"{widest:.0%} of the median)")
    if load is not None and load > cores:
        reasons.append(f"the load average was {load:.1f} on {cores} cores: other processes "
                       f"took CPU time while it ran")
    if not reasons:
        return None
    return ("Noisy: " + "; ".join(reasons) + ". The ratios were measured side by side and "
            "are less affected than the times; rerun on an idle machine to trust either.")


class LoadWatch:
    """The highest load average seen at the calls of ``check`` (start and end of a
    measurement, at least)."""

    def __init__(self, load: Callable[[], float | None] = load_average) -> None:
        self._load = load
        self.highest: float | None = None
        self.check()

    def check(self) -> float | None:
        value = self._load()
        if value is not None and (self.highest is None or value > self.highest):
            self.highest = value
        return self.highest


def records_note(records: Iterable[Mapping], keys: Iterable[str]) -> str | None:
    """``noise_note`` over benchmark records: their ratios stored under ``keys`` (as
    ``Spread.as_dict``), the highest ``load_average`` among them, their ``cores``."""
    records, keys = list(records), tuple(keys)
    ratios = [spread_from_dict(r[k]) for r in records for k in keys if r.get(k)]
    loads = [r["load_average"] for r in records if r.get("load_average") is not None]
    cores = min((r["cores"] for r in records if r.get("cores")), default=core_count())
    return noise_note(ratios, max(loads, default=None), cores)


@contextlib.contextmanager
def one_cpu_thread(device: str) -> Iterator[None]:
    """On a CPU, torch on one thread while it lasts (elsewhere nothing): with other
    processes on the cores, threads of one op wait for each other at every barrier and a
    call takes ten times longer or more, differently each time; one thread slows only as
    much as its share of the cores."""
    if device != "cpu":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
