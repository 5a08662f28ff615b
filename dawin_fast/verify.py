"""The verifier: a kernel strategy proves itself on the user's device before the dispatch uses it.

On CUDA, the first time a strategy and config would run for a key (the measured dispatch's
key, ``dawin_fast.measured``) on a device, as the model's pick or as a timed candidate, it
runs twice on the call's own tensors, into outputs poisoned first (NaN, then a finite
sentinel), and is held to the trusted reference: fp32 ``F.linear`` on each group's merged
weight (``reference.merged_reference``, cuBLAS, TF32 off) with the element-wise bound
``reference.error_bound``, which honest rounding stays within and one corrupted k16 slice
exceeds. It is excluded for that key, device and version when it

* raises at compile, launch or the synchronisation after it (``raised``);
* leaves an element unwritten: NaN after the first launch, the sentinel after the second
  (``unwritten``);
* returns NaN or inf where the reference is finite (``nonfinite``);
* exceeds the bound anywhere (``bound``);
* differs bit for bit between the two launches (``nonrepeatable``);
* was being verified when an earlier process died (``died``: an illegal-address error or
  a crash; see below).

Verdicts live in memory and on disk, one JSON file per device and versions beside the
measured dispatch's cache (``verify-<device>-<hash>.json`` next to ``dispatch-...``): a
later process reuses them; another device or version verifies again. Each exclusion is
reported once per process, one warning line naming the strategy, config, shape, device and
the worst error against its bound; when every candidate of a call fails, the call is served
by the PyTorch path and the warning says so.

A CUDA error does not poison later processes: before its launches, a candidate's
"verifying" marker is written to disk (``verifying-<device>-<hash>-<pid>-<n>.json``) and
removed after. A process killed during them (a sticky CUDA error, a segfault) leaves its
marker; the next process that loads the device's verdicts finds it (its pid no longer
runs), excludes that candidate on disk and says so once. A subprocess probe per device
would isolate the first launch fully, but a Python start that imports torch and this
library costs seconds (``docs/gpus.md``), more than the verification itself.

Where nothing can be launched and compared (CUDA-graph capture, ``torch.compile``
tracing) only cached verdicts count: a candidate passes if it passed for this key, or
else if it passed on this device for any other key (the self-check's runs included).

Off switch: ``DAWIN_FAST_VERIFY=0`` or ``set_verification(False)``. This module's file I/O
is allowed by the layering test (like ``measured``'s cache).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from . import measured
from .reference import error_bound, merged_reference

ENV_VERIFY = "DAWIN_FAST_VERIFY"
#: A marker of another host (a shared cache directory) counts as left over after this long.
FOREIGN_MARKER_S = 3600.0
#: The reasons of an exclusion, in the order they are checked.
REASONS = ("raised", "unwritten", "nonfinite", "bound", "nonrepeatable", "died")

Launch = Callable[[torch.Tensor], object]  # runs the call one way, into the given output

_lock = threading.RLock()
_enabled: bool | None = None
_files: dict[Path, dict[str, dict[str, dict]]] = {}  # verdict file -> key -> name -> verdict
_warned: set[tuple[str, str, str]] = set()
_marker_count = 0


def enabled() -> bool:
    """Whether kernels are verified: ``set_verification``'s value, else
    ``DAWIN_FAST_VERIFY`` (on unless "0")."""
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_VERIFY, "1") != "0"


def set_verification(flag: bool | None) -> None:
    """Verify kernels before use (True), trust them unverified (False), or follow
    ``DAWIN_FAST_VERIFY`` (None, the default: on unless "0")."""
    global _enabled
    _enabled = flag


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How one candidate did on one call. ``worst``: the largest |y - ref| / bound over
    the elements where the reference is finite (inf: a non-finite output there; NaN: not
    measured, e.g. it raised)."""

    passed: bool
    reason: str  # "ok" or one of REASONS
    detail: str
    worst: float = math.nan
    repeatable: bool | None = None
    shape: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["worst"] = None if math.isnan(self.worst) else (
            "inf" if math.isinf(self.worst) else self.worst)
        return out

    @classmethod
    def from_json(cls, data: dict) -> Verdict:
        worst = data.get("worst")
        worst = math.nan if worst is None else math.inf if worst == "inf" else float(worst)
        return cls(passed=bool(data["passed"]), reason=str(data["reason"]),
                   detail=str(data.get("detail", "")), worst=worst,
                   repeatable=data.get("repeatable"), shape=str(data.get("shape", "")),
                   seconds=float(data.get("seconds", 0.0)))


# ------------------------------------------------------------------------------ the check


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_INT_OF_SIZE[t.element_size()])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(launch: Launch, ref: torch.Tensor, bound: torch.Tensor, shape: tuple[int, int],
          dtype: torch.dtype, device: torch.device, label: str = "") -> Verdict:
    """Run ``launch`` twice into poisoned [rows, N] outputs and hold it to ``ref`` and
    ``bound`` (fp32, on ``device``): the first failing rule of the module docstring, or a
    pass. Never raises for the candidate's own errors."""
    start = time.perf_counter()
    sentinel = -torch.finfo(dtype).max
    outs = []
    for poison in (math.nan, sentinel):
        out = torch.full(shape, poison, dtype=dtype, device=device)
        try:
            launch(out)
            _sync(device)
        except Exception as exc:  # the candidate's failure, whatever it is
            text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            return Verdict(False, "raised", f"raised {text}", shape=label,
                           seconds=time.perf_counter() - start)
        outs.append(out)
    first, second = outs
    finite_ref = torch.isfinite(ref)
    err = (first.float() - ref).abs() / bound
    err = torch.where(finite_ref, err, torch.zeros_like(err))
    nonfinite = ~torch.isfinite(first) & finite_ref
    worst = math.inf if bool(nonfinite.any()) else (float(err.max()) if err.numel() else 0.0)
    repeatable = bool(torch.equal(_bits(first), _bits(second)))
    seconds = time.perf_counter() - start

    def verdict(reason: str, detail: str) -> Verdict:
        return Verdict(reason == "ok", reason, detail, worst, repeatable, label, seconds)

    unwritten = torch.isnan(first) & (second == sentinel) & finite_ref
    if bool(unwritten.any()):
        rows = unwritten.any(1).nonzero().flatten()
        return verdict("unwritten", f"left {int(unwritten.sum())} elements unwritten "
                                    f"(first in row {int(rows[0])}, {len(rows)} rows)")
    if bool(nonfinite.any()):
        return verdict("nonfinite", f"returned {int(nonfinite.sum())} NaN/inf elements "
                                    f"where the reference is finite")
    if worst > 1.0:
        over = int((err > 1).sum())
        return verdict("bound", f"worst error {worst:.3g}x its bound ({over} elements "
                                f"over it)")
    if not repeatable:
        differing = int((_bits(first) != _bits(second)).sum())
        return verdict("nonrepeatable", f"two launches differ in {differing} elements "
                                        f"(bitwise)")
    return verdict("ok", f"worst error {worst:.3g}x its bound, repeatable")


def reference_bound(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
                    offsets: torch.Tensor, bias: torch.Tensor | None, tf32: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ref, bound) of a call: the merged-weight fp32 reference and its element-wise
    bound for x's dtype."""
    ref, scale = merged_reference(x, weight, coeffs, offsets, bias)
    return ref, error_bound(ref, scale, x.dtype, tf32=tf32)


# ------------------------------------------------------------------------------ the cache


def verdict_file(device: str) -> Path:
    """The verdicts' JSON file of one device and the current versions (beside the
    measured dispatch's file of the same device and versions)."""
    path = measured.cache_file(device)
    return path.with_name("verify-" + path.name.removeprefix("dispatch-"))


def _marker_prefix(device: str) -> str:
    return "verifying-" + verdict_file(device).stem.removeprefix("verify-") + "-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def _left_over(marker: dict, path: Path) -> bool:
    if marker.get("host") != socket.gethostname():
        try:
            return time.time() - path.stat().st_mtime > FOREIGN_MARKER_S
        except OSError:
            return False
    pid = int(marker.get("pid", -1))
    return pid != os.getpid() and not _pid_alive(pid)


def _warn(line: str) -> None:
    warnings.warn(line, RuntimeWarning, stacklevel=4)


def _load(device: str) -> dict[str, dict[str, dict]]:
    """The device's verdicts (read once per process); left-over markers of dead processes
    become ``died`` verdicts here, on disk, with one warning each."""
    path = verdict_file(device)
    if path in _files:
        return _files[path]
    verdicts: dict[str, dict[str, dict]] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            verdicts = data["verdicts"]
            if not isinstance(verdicts, dict) or not all(
                    isinstance(v, dict) and all(isinstance(e, dict) and "passed" in e
                                                for e in v.values())
                    for v in verdicts.values()):
                raise ValueError("'verdicts' is not a map of key -> name -> verdict")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _warn(f"dawin_fast: ignoring the unreadable verification cache {path} "
                  f"({type(exc).__name__}: {exc}); kernels will be verified again")
            verdicts = {}
    _files[path] = verdicts
    died = False
    if path.parent.is_dir():
        for marker_path in sorted(path.parent.glob(_marker_prefix(device) + "*.json")):
            try:
                marker = json.loads(marker_path.read_text())
                key, name = str(marker["key"]), str(marker["candidate"])
            except (OSError, ValueError, KeyError, TypeError):
                marker_path.unlink(missing_ok=True)
                continue
            if not _left_over(marker, marker_path):
                continue
            verdict = Verdict(False, "died", f"the process verifying it (pid "
                              f"{marker.get('pid')}) died during its launches: a CUDA "
                              f"error or a crash", shape=str(marker.get("shape", "")))
            verdicts.setdefault(key, {})[name] = verdict.to_json()
            _report(device, key, name, verdict)
            marker_path.unlink(missing_ok=True)
            died = True
    if died:
        _save(device)
    return verdicts


def _save(device: str) -> None:
    """Write atomically (a temporary file renamed over the old one)."""
    path = verdict_file(device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": device, "versions": measured.versions(),
                   "verdicts": _files.get(path, {})}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                         suffix=".tmp") as tmp:
            json.dump(payload, tmp, indent=1, sort_keys=True)
        os.replace(tmp.name, path)
    except OSError as exc:  # a read-only home: keep the verdicts in memory only
        _warn(f"dawin_fast: cannot write the verification cache {path} ({exc})")


def _write_marker(device: str, key: str, name: str, shape: str) -> Path | None:
    global _marker_count
    _marker_count += 1
    path = verdict_file(device).parent / (
        f"{_marker_prefix(device)}{os.getpid()}-{_marker_count}.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"device": device, "key": key, "candidate": name,
                                    "shape": shape, "pid": os.getpid(),
                                    "host": socket.gethostname(), "started": time.time()}))
    except OSError:
        return None  # no marker: the verdict itself is still recorded in memory
    return path


def _report(device: str, key: str, name: str, verdict: Verdict) -> None:
    """One warning line per excluded (device, key, candidate) per process."""
    if verdict.passed or (device, key, name) in _warned:
        return
    _warned.add((device, key, name))
    strategy, _, config = name.partition(":")
    _warn(f"dawin_fast: kernel {strategy} config {config or 'default'} excluded after "
          f"verification on {device}, for {verdict.shape or key}: {verdict.detail} "
          f"({verdict.reason})")


def lookup(device: str, key: str, name: str) -> Verdict | None:
    """The cached verdict of one candidate, or None (never verifies)."""
    with _lock:
        entry = _load(device).get(key, {}).get(name)
    return None if entry is None else Verdict.from_json(entry)


def record(device: str, key: str, name: str, verdict: Verdict) -> None:
    """Keep a verdict, in memory and on disk, and report it if it excludes."""
    with _lock:
        _load(device).setdefault(key, {})[name] = verdict.to_json()
        _save(device)
    _report(device, key, name, verdict)


def verify(device: str, key: str, name: str, launch: Launch,
           reference: Callable[[], tuple[torch.Tensor, torch.Tensor]],
           shape: tuple[int, int], dtype: torch.dtype, torch_device: torch.device,
           label: str = "") -> Verdict:
    """The candidate's cached verdict, else a new one (``check``), recorded. A marker on
    disk stands for the launches while they run."""
    cached = lookup(device, key, name)
    if cached is not None:
        _report(device, key, name, cached)
        return cached
    ref, bound = reference()
    marker = _write_marker(device, key, name, label)
    try:
        verdict = check(launch, ref, bound, shape, dtype, torch_device, label)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    record(device, key, name, verdict)
    return verdict


def passed_anywhere(device: str, name: str) -> bool:
    """Whether ``name`` passed for some key on this device (and versions)."""
    with _lock:
        return any(entries.get(name, {}).get("passed") for entries in _load(device).values())


def warn_once(device: str, key: str, what: str, line: str) -> None:
    """One warning line per (device, key, what) per process (the dispatch's fallbacks)."""
    with _lock:
        if (device, key, what) in _warned:
            return
        _warned.add((device, key, what))
    _warn(line)


def clear(disk: bool = True) -> None:
    """Forget every verdict and every warning given: in memory, and (``disk``) the cache
    directory's verdict files and markers."""
    with _lock:
        _files.clear()
        _warned.clear()
        folder = measured.cache_dir()
        if disk and folder.is_dir():
            for pattern in ("verify-*.json", "verifying-*.json"):
                for path in folder.glob(pattern):
                    path.unlink(missing_ok=True)


class Screen:
    """The candidates of one call that may run: ``screen(names)`` returns those of
    ``names`` that passed, verifying the unknown ones on the call's tensors when
    ``can_run`` (else, under capture or tracing, only cached verdicts count: this key's,
    else a pass on this device for another key). The measured dispatch's ``screen=``."""

    def __init__(self, device: str, key: str, launches: Mapping[str, Launch],
                 reference: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                 shape: tuple[int, int], dtype: torch.dtype, torch_device: torch.device,
                 label: str, can_run: bool = True) -> None:
        self.device, self.key, self.launches = device, key, launches
        self.shape, self.dtype, self.torch_device = shape, dtype, torch_device
        self.label, self.can_run = label, can_run
        self._reference = reference
        self._ref: tuple[torch.Tensor, torch.Tensor] | None = None

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._ref is None:  # computed once per call, only when something is verified
            self._ref = self._reference()
        return self._ref

    def __call__(self, names: Sequence[str]) -> list[str]:
        return [name for name in names if self.passes(name)]

    def passes(self, name: str) -> bool:
        if not self.can_run:
            cached = lookup(self.device, self.key, name)
            if cached is not None:
                _report(self.device, self.key, name, cached)
                return cached.passed
            return passed_anywhere(self.device, name)
        return verify(self.device, self.key, name, self.launches[name], self.reference,
                      self.shape, self.dtype, self.torch_device, self.label).passed


def iter_verdicts(device: str) -> Iterator[tuple[str, str, Verdict]]:
    """(key, name, verdict) of every verdict of a device (reports)."""
    with _lock:
        items = [(k, n, e) for k, v in _load(device).items() for n, e in v.items()]
    for key, name, entry in items:
        yield key, name, Verdict.from_json(entry)


# ------------------------------------------------------------------------- the self-check


def versions() -> dict[str, str]:
    """What verdicts depend on besides the device (``measured.versions``)."""
    return measured.versions()


def cpu_name() -> str:
    """This CPU's name in the caches (``measured.cpu_name``)."""
    return measured.cpu_name()


def cuda_device_name(device: torch.device) -> str:
    """A CUDA device's name in the caches: its name and compute capability."""
    from .kernels import arch

    major, minor = arch.capability(device)
    return f"{arch.device_name(device)} sm_{major}{minor}"


#: ViT-B/32's MLP: fc1 (K=768 -> N=3072) and fc2 (3072 -> 768), 50 tokens per image.
SELFCHECK_LAYERS = {"fc1": (768, 3072), "fc2": (3072, 768)}
SELFCHECK_ROWS = 800  # 16 images
SELFCHECK_TOKENS = 50
SELFCHECK_DTYPES = (torch.bfloat16, torch.float16)
SELFCHECK_MODELS = (2, 8)
SELFCHECK_GROUPINGS = ("one_group", "per_sample")


@dataclasses.dataclass(frozen=True)
class SelfCheckCase:
    """One call shape: x [rows, k_dim], weight [num_models, n_dim, k_dim], one group or
    groups of ``tokens`` rows."""

    layer: str
    k_dim: int
    n_dim: int
    rows: int
    num_models: int
    dtype: torch.dtype
    grouping: str
    tokens: int = SELFCHECK_TOKENS

    @property
    def groups(self) -> int:
        return 1 if self.grouping == "one_group" else math.ceil(self.rows / self.tokens)

    @property
    def id(self) -> str:
        return (f"{self.layer} {self.k_dim}->{self.n_dim} {self.grouping} "
                f"{str(self.dtype).removeprefix('torch.')} M={self.num_models} "
                f"T={self.rows}")


def selfcheck_cases(layers: Mapping[str, tuple[int, int]] | None = None,
                    rows: int = SELFCHECK_ROWS, tokens: int = SELFCHECK_TOKENS,
                    dtypes: Sequence[torch.dtype] = SELFCHECK_DTYPES,
                    models: Sequence[int] = SELFCHECK_MODELS,
                    groupings: Sequence[str] = SELFCHECK_GROUPINGS) -> list[SelfCheckCase]:
    """Every self-check case (default: the ViT-B/32 MLP at production K and N); smaller
    ``layers``/``rows`` run it on the CPU through the interpreter (fp16 there)."""
    layers = SELFCHECK_LAYERS if layers is None else layers
    return [SelfCheckCase(name, k, n, rows, m, dtype, grouping, tokens)
            for dtype in dtypes for m in models for grouping in groupings
            for name, (k, n) in layers.items()]


def _selfcheck_inputs(case: SelfCheckCase, device: torch.device, seed: int = 0):
    """Random rows, weights scaled by 1/sqrt(K), and coefficients that swing between
    neighbouring groups (a tile computed with its neighbour's weight is far off)."""
    gen = torch.Generator().manual_seed(seed)
    g, m = case.groups, case.num_models
    coeffs = torch.full((g, m), -0.5 / max(m - 1, 1))
    coeffs[torch.arange(g), torch.arange(g) % m] = 1.5
    coeffs += 0.1 * torch.rand(g, m, generator=gen)
    bounds = [0, case.rows] if g == 1 else [min(i * case.tokens, case.rows)
                                            for i in range(g)] + [case.rows]
    x = torch.randn(case.rows, case.k_dim, generator=gen)
    weight = torch.randn(m, case.n_dim, case.k_dim, generator=gen) / math.sqrt(case.k_dim)
    bias = torch.randn(m, case.n_dim, generator=gen)
    x, weight, bias = (t.to(device, case.dtype) for t in (x, weight, bias))
    return x, weight, coeffs.to(device), torch.tensor(bounds, device=device), bias


def kernel_configs(x: torch.Tensor, weight: torch.Tensor, num_groups: int
                   ) -> list[tuple[str, str | None]]:
    """Every (strategy, config) that can serve this call here: every candidate the
    dispatch could time (no cost cut), then each strategy as ``use_strategy`` runs it
    (its served strategy and the model's config). Config None: autotuned."""
    from . import kernels
    from .kernels import dispatch
    from .kernels.common import use_ieee

    out = list(kernels.candidates(x, weight, num_groups, factor=math.inf))
    target = dispatch.target_for(x, weight)
    num_rows, k_dim = x.shape
    num_models, n_dim, _ = weight.shape
    for strategy in kernels.STRATEGIES:
        served = dispatch.served_by(strategy, target, x.dtype, use_ieee(x.dtype))
        config = None
        if served in dispatch.NEW_STRATEGIES:
            try:
                config = dispatch.best_config(served, num_rows, num_groups, num_models,
                                              n_dim, k_dim, x.dtype, target.smem_limit)
            except ValueError:  # nothing of it fits this device: it never runs here
                continue
        if (served, config) not in out:
            out.append((served, config))
    return out


def launch_kernel(x: torch.Tensor, weight: torch.Tensor, coeffs: torch.Tensor,
                  offsets: torch.Tensor, bias: torch.Tensor | None, strategy: str,
                  config: str | None, out: torch.Tensor) -> None:
    """One forced kernel launch into ``out`` (the self-check's candidates)."""
    from . import kernels

    kernels.interp_matmul(x, weight, coeffs, offsets, bias, strategy=strategy, config=config,
                          out=out)


def run_selfcheck(device: torch.device, cases: Sequence[SelfCheckCase] | None = None,
                  record_verdicts: bool | None = None,
                  progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Each strategy and config of ``kernel_configs`` on each case, held to the reference
    with the repeat check (``check``). One row per run: strategy, config, case, worst
    error / bound, repeatable, seconds (compile included), passed, reason, detail. On
    CUDA the verdicts are recorded for this device (``record_verdicts``): a strategy that
    passed here counts as verified where the dispatch cannot verify (CUDA-graph capture)."""
    cases = selfcheck_cases() if cases is None else cases
    record_verdicts = device.type == "cuda" if record_verdicts is None else record_verdicts
    name = cuda_device_name(device) if device.type == "cuda" else "cpu (interpreter)"
    rows = []
    for case in cases:
        x, weight, coeffs, offsets, bias = _selfcheck_inputs(case, device)
        ref, bound = reference_bound(x, weight, coeffs, offsets, bias, tf32=False)
        for strategy, config in kernel_configs(x, weight, case.groups):
            launch = functools.partial(launch_kernel, x, weight, coeffs, offsets, bias,
                                       strategy, config)
            cand = strategy if config is None else f"{strategy}:{config}"
            key = f"selfcheck {case.id}"
            marker = _write_marker(name, key, cand, case.id) if record_verdicts else None
            try:
                verdict = check(launch, ref, bound, (case.rows, case.n_dim), case.dtype,
                                device, case.id)
            finally:
                if marker is not None:
                    marker.unlink(missing_ok=True)
            if record_verdicts:
                with _lock:
                    _load(name).setdefault(key, {})[cand] = verdict.to_json()
                    _save(name)
            row = dict(device=name, strategy=strategy, config=config or "autotuned",
                       case=case.id, layer=case.layer, k_dim=case.k_dim, n_dim=case.n_dim,
                       rows=case.rows, num_models=case.num_models, groups=case.groups,
                       dtype=str(case.dtype).removeprefix("torch."), grouping=case.grouping,
                       worst_err_over_bound=(None if math.isnan(verdict.worst) else
                                             verdict.worst),
                       repeatable=verdict.repeatable, seconds=round(verdict.seconds, 4),
                       passed=verdict.passed, reason=verdict.reason, detail=verdict.detail)
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows
