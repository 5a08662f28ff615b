"""The measured dispatch: time the strategies a model ranks close, keep the fastest, cache it.

Like Triton's autotune cache and gemlite's: on the first call for a key (the caller's:
dtype, M, N, K, bucketed row and group counts, ...) every candidate the caller's model
keeps is timed on the caller's own tensors and the fastest is kept, in memory and on disk,
one JSON file per device and per library/torch/Triton version (``cache_file``). A later
call, or a later process, reuses it; another device or another version measures again.

Off switches: ``DAWIN_FAST_MEASURE=0`` (or ``set_enabled(False)``) keeps the model's
choice everywhere; ``clear()`` forgets every choice, in memory and on disk. The cache
lives in ``DAWIN_FAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/dawin_fast``, else
``~/.cache/dawin_fast``. A cache file that cannot be read is ignored with a warning (and
rewritten at the next measurement).

This module knows nothing of kernels: callers pass named candidates (callables that run
the call one way) and the model's pick (the prior, used when measuring is off or not
possible, e.g. inside CUDA-graph capture). The layering test allows this module's file I/O.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path

import torch

ENV_MEASURE = "DAWIN_FAST_MEASURE"
ENV_CACHE_DIR = "DAWIN_FAST_CACHE_DIR"
#: Timed runs per candidate after one warm-up run (the median on CUDA, the minimum on CPU).
CUDA_REPEATS = 5
CPU_REPEATS = 2

Timer = Callable[[Callable[[], object], torch.device], float]

_lock = threading.Lock()
_enabled: bool | None = None
_timer: Timer | None = None
_files: dict[Path, dict[str, dict]] = {}  # cache file -> key -> {"choice", "seconds"}


def enabled() -> bool:
    """Whether choices are measured: ``set_enabled``'s value, else ``DAWIN_FAST_MEASURE``
    (on unless "0")."""
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_MEASURE, "1") != "0"


def set_enabled(flag: bool | None) -> None:
    """Turn measuring on or off in this process (None: back to ``DAWIN_FAST_MEASURE``)."""
    global _enabled
    _enabled = flag


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dawin_fast"


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    out = {"torch": torch.__version__}
    for name in ("dawin_fast", "triton"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "none"
    return tuple(sorted(out.items()))


def versions() -> dict[str, str]:
    """What a measurement depends on besides the device: this library, torch and Triton
    (read once: importlib.metadata scans site-packages)."""
    return dict(_installed_versions())


def cache_file(device: str) -> Path:
    """The JSON file of one device and the current versions."""
    env = os.environ
    return _cache_file(device, tuple(sorted(versions().items())), env.get(ENV_CACHE_DIR),
                       env.get("XDG_CACHE_HOME"), env.get("HOME"))


@functools.lru_cache(maxsize=64)
def _cache_file(device: str, version_items: tuple, *folder_env: str | None) -> Path:
    """``cache_file``'s path, built once per device, versions and the environment that
    names the folder (every call of the measured dispatch looks its key up there)."""
    tag = hashlib.sha256(json.dumps([device, dict(version_items)], sort_keys=True).encode())
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-")[:60] or "device"
    return cache_dir() / f"dispatch-{slug}-{tag.hexdigest()[:12]}.json"


def _load(path: Path) -> dict[str, dict]:
    if path in _files:
        return _files[path]
    choices: dict[str, dict] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            choices = data["choices"]
            if not isinstance(choices, dict) or not all(
                    isinstance(v, dict) and isinstance(v.get("choice"), str)
                    for v in choices.values()):
                raise ValueError("'choices' is not a map of key -> {choice, seconds}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"dawin_fast: ignoring the unreadable dispatch cache {path} "
                          f"({type(exc).__name__}: {exc}); choices will be measured again",
                          RuntimeWarning, stacklevel=3)
            choices = {}
    _files[path] = choices
    return choices


def _save(path: Path, device: str, choices: Mapping[str, dict]) -> None:
    """Write atomically (a temporary file renamed over the old one): readers in other
    processes see the old file or the new one, never half of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": device, "versions": versions(), "choices": dict(choices)}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                         suffix=".tmp") as tmp:
            json.dump(payload, tmp, indent=1, sort_keys=True)
        os.replace(tmp.name, path)
    except OSError as exc:  # a read-only home: keep the choice in memory only
        warnings.warn(f"dawin_fast: cannot write the dispatch cache {path} ({exc})",
                      RuntimeWarning, stacklevel=3)


def lookup(device: str, key: str) -> str | None:
    """The measured choice for ``key`` on ``device``, or None (never measures)."""
    with _lock:
        entry = _load(cache_file(device)).get(key)
    return entry["choice"] if entry else None


def choose(device: str, key: str, candidates: Mapping[str, Callable[[], object]],
           prior: str, *, torch_device: torch.device, can_measure: bool = True,
           screen: Callable[[Sequence[str]], Collection[str]] | None = None
           ) -> tuple[str | None, bool]:
    """(choice, measured) for a call: the cached measurement, else (when ``enabled()``,
    ``can_measure`` and there is more than one candidate) a new one, else ``prior``.

    ``candidates``: name -> a callable that runs the call that way (into a scratch
    output); ``prior`` must be one of them. A cached choice that is no longer a candidate
    is measured again.

    ``screen``: names -> those that may run (the verifier, ``dawin_fast.verify.Screen``).
    With one, nothing it rejects is chosen or timed: a rejected cached choice is measured
    again among the rest; where nothing is measured, the choice is the first candidate it
    accepts, ``prior`` first, then the candidates' order; None when it accepts none.
    """
    if prior not in candidates:
        raise ValueError(f"prior {prior!r} is not a candidate {sorted(candidates)}")
    if screen is not None:
        return _choose_screened(device, key, candidates, prior, torch_device, can_measure,
                                screen)
    if not enabled() or len(candidates) < 2:
        return prior, False
    cached = lookup(device, key)
    if cached in candidates:
        return cached, True
    if not can_measure:
        return prior, False
    return _measure(device, key, candidates, prior, torch_device), True


def _choose_screened(device, key, candidates, prior, torch_device, can_measure, screen):
    if enabled() and len(candidates) > 1:
        cached = lookup(device, key)
        if cached in candidates and screen([cached]):
            return cached, True
        if can_measure:
            allowed = set(screen(list(candidates)))
            kept = {name: run for name, run in candidates.items() if name in allowed}
            if len(kept) > 1:
                first = prior if prior in kept else next(iter(kept))
                return _measure(device, key, kept, first, torch_device), True
            return (next(iter(kept)) if kept else None), False
    for name in (prior, *(n for n in candidates if n != prior)):
        if screen([name]):
            return name, False
    return None, False


def _measure(device: str, key: str, candidates: Mapping[str, Callable[[], object]],
             prior: str, torch_device: torch.device) -> str:
    timer = _timer or default_timer
    seconds = {name: float(timer(run, torch_device)) for name, run in candidates.items()}
    best = min(seconds, key=lambda name: (seconds[name], name != prior))
    path = cache_file(device)
    with _lock:
        choices = _load(path)
        choices[key] = {"choice": best, "seconds": seconds}
        _save(path, device, choices)
    return best


def default_timer(run: Callable[[], object], device: torch.device) -> float:
    """Seconds one run takes: one warm-up run (Triton's autotune and compile happen there),
    then the median of ``CUDA_REPEATS`` runs between CUDA events, or on a CPU the fastest
    of ``CPU_REPEATS`` wall-clock runs."""
    run()
    if device.type == "cuda":
        times = []
        for _ in range(CUDA_REPEATS):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    best = float("inf")
    for _ in range(CPU_REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


@contextlib.contextmanager
def use_timer(timer: Timer | None) -> Iterator[None]:
    """Time candidates with ``timer(run, device) -> seconds`` (tests inject a fake one)."""
    global _timer
    previous, _timer = _timer, timer
    try:
        yield
    finally:
        _timer = previous


def clear(disk: bool = True) -> None:
    """Forget every measured choice: in memory, and (``disk``) this cache's files."""
    with _lock:
        _files.clear()
        if disk and cache_dir().is_dir():
            for path in cache_dir().glob("dispatch-*.json"):
                path.unlink(missing_ok=True)


@functools.cache
def _cpu_model() -> str:
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return name


def cpu_name() -> str:
    """The CPU's model name and torch's thread count: the CPU path's device key."""
    return f"cpu {_cpu_model()}, {torch.get_num_threads()} threads"


def bucket(n: int) -> int:
    """The next power of two (a key's row or group count, like the autotune key)."""
    return 1 << max(n - 1, 0).bit_length()
