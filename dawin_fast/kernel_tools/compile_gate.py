"""Compile gate: what the H100 (and the A100 and Ada cards) will run, built and checked on a CPU.

The Triton interpreter runs kernels as NumPy, so a kernel that is right there can still
compile, on the GPU, into something slow or unlaunchable: shared memory over the limit,
register spills, ``mma.sync`` instead of Hopper's ``wgmma``, or wgmma serialized by ptxas.
This gate compiles every kernel variant for sm_90a exactly as a launch would, reads the
PTX and ptxas's report, and fails on those defects.

**Exactly as a launch would.** A variant is a real call: the kernel object the launcher
indexes with ``[grid]``, and the arguments it passes (CPU tensors with the real shapes,
dtypes, strides and alignment; the real ints and constexprs). The gate runs the installed
Triton's own launch path, ``JITFunction.run(..., warmup=True)``, under a compile-only
driver whose target is ``cuda:90``. So the JIT's own binder specializes the arguments
(``native_specialize_impl``: ints equal to 1 become constexprs, pointers and ints
divisible by 16 get ``tt.divisibility`` and reach ``ASTSource`` as ``attrs``), and for
autotuned kernels the gate compiles every config the autotuner's own ``prune_configs``
keeps for that call: every config autotune can pick. CPU and CUDA allocations are both at
least 64-byte aligned, so the specialization is the one a GPU launch sees.

**What it records** per (variant, config), on each Triton it runs under: the PTX target,
the MMA instruction (``wgmma``, ``mma.sync`` or none: FMA), wgmma's A operand (registers or
shared), the ``wgmma.wait_group`` depth in the main loop (the innermost PTX loop with the
most wgmma), ``cp.async`` and TMA copies, registers, spill bytes, stack frame (local
memory), serialization notes and warnings (ptxas ``-v``, the invocation Triton itself
makes), shared memory (compiled metadata) and, where the kernel module gives one, its
shared-memory model.

**What it checks** (``CHECKS``): by default ``compiles`` (for sm_90a), ``smem``, ``spill``
(and local memory), ``wgmma``, ``serial``, ``warn``, ``a_hazard`` (the SASS, disassembled
with the ``cuobjdump`` of the gating Triton's wheel, has no write to a register of a
still-pending wgmma's register-A operand: ``sass_hazard``; target-aware by construction, it
only has something to check where register-A HGMMA appears), plus ``model_bound`` and ``model``
when the variant has a shared-memory model (with ``shared_slack``: the compiled size may
exceed the model by that much, never fall below it); ``wait``, ``a_regs`` and ``tma`` on
request. A variant may allow a failing check with a written reason
(``allow={"wgmma": "why"}``): it passes, and the table shows the reason.

**Registry.** Every strategy of ``dawin_fast.kernels.registry`` names its kernel modules'
``compile_variants()`` providers (generators of ``Variant``); the gate collects them, each
provider once, in the order of its module's name (no list to edit here). Today:
``interp_matmul`` (combine, rowscaled), ``swapab_gluon`` (the Gluon swap-AB kernel),
``swapab_twin`` (its plain-Triton twin, which ``dispatch`` runs on a GPU wherever Gluon
cannot), ``epilogue_scaled``, ``wstat_gluon`` (the Gluon weight-stationary kernel) and
``wstat_twin``::

    def compile_variants():
        from .compile_gate import DEFAULT_CHECKS, Variant, grouping, stand_in_call
        name, lengths = grouping(4096, 1)                        # "one group of 4096 rows"
        call = stand_in_call(lengths, 2, 3072, 768, torch.bfloat16)  # CPU, real shapes
        plan = plan_swapab_gluon(*call, cfg)                     # the launcher's own plan
        yield Variant(
            kernel="swapab (Gluon)",              # section of the table
            case=f"bfloat16 M=2, {name}",         # the call
            fn=plan.kernel, args=plan.args,       # what the launcher calls with [grid]
            kwargs=plan.kwargs,                   # constexprs, num_warps, maxnreg, ...
            config=cfg.name, tiles="...",         # shown in the table (no autotuner)
            shared_model=lambda config: ...,      # optional: modeled bytes, checked
            shared_slack=0,                       # bytes the compiled size may exceed it
            checks=(*DEFAULT_CHECKS, "wait", "a_regs", "tma"),
            allow={},                             # check -> written reason
            core=True,                            # also on the secondary Tritons
        )

Always let the launcher build the arguments (``interp_matmul.plan_launch``, the other
kernels' ``plan_*`` returning a ``planned.PlannedLaunch``), so the gate cannot drift from
what is launched. ``fn`` may be an autotuner (every kept config is compiled), a
``triton.jit`` or a Gluon ``jit`` function (compiled once with ``kwargs``, which hold
``num_warps`` etc. as the launcher passes them).

**Running it.** ``python -m dawin_fast.kernel_tools.compile_gate`` compiles (parallel
subprocesses, ``--jobs``), prints a summary and the failures, and exits 1 on failure;
``--write`` also writes ``kernels/compiled.json`` and ``kernels/compiled.md`` (the table,
summary lines first); ``--render`` re-renders the markdown from the JSON. Other Triton
installs to gate (the H100 runs 3.6.0): ``--triton DIR`` or ``DAWIN_GATE_TRITONS``
(``os.pathsep``-separated PYTHONPATH dirs); on those only ``core`` variants compile.
``tests/kernels/test_kernel_compile.py`` runs it in CI.

**Per architecture** (``arch.ARCHES``): every variant is compiled for sm_90a
(H100/H200, 232 448 B of shared memory per block) on every gated Triton; every variant
that is not Hopper-only (``variant_archs``: Gluon kernels and TMA descriptors are, the
variants with a ``tma`` check or ``hopper_only``) also for sm_80 (A100, 166 912 B) and
sm_89 (Ada, 101 376 B) on the installed Triton only (``EXTRA_TARGET_TRITONS``: they would
double the 3.6 rows' cost in CI, and the GPU machines that run 3.6 are Hopper). There
the autotuner's prune runs against that target's limit (``arch.assume``), ``compiles``
wants that target in the PTX, ``smem`` its limit, ``wgmma`` means "the target's tensor-core
MMA" (mma.sync off Hopper), and the wgmma-only checks (``wait``, ``a_regs``, ``tma``) are
dropped. ``--arch NAME`` (repeatable) or ``DAWIN_GATE_ARCHS`` selects targets. A report's
``tritons`` is keyed by build label: the Triton version for sm_90a, "version target"
(``3.8.0 sm_80``) for the others.

**What it cannot show**: speed, and numerics on the tensor cores (bf16 especially: the
interpreter's bf16 dot is broken). Those need a GPU.

This module does I/O (it is a developer tool: subprocesses, files, a report); the layering
test allows exactly this module of ``kernels/`` to.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..kernels import arch as archs
from ..kernels.configs import SHARED_MEMORY_LIMIT
from ..kernels.gate_spec import (  # noqa: F401  (re-exported for the gate's users)
    CHECKS,
    DEFAULT_CHECKS,
    Variant,
    grouping,
    stand_in_call,
)

#: The table lives beside the kernels it describes (kernels/ in the source tree).
HERE = Path(importlib.import_module("dawin_fast.kernels").__file__).resolve().parent
JSON_PATH = HERE / "compiled.json"
MD_PATH = HERE / "compiled.md"
COMMAND = "python -m dawin_fast.kernel_tools.compile_gate --write"
TARGET = archs.HOPPER.gate_target  # sm_90a: H100 / H200 (the worker's default)
#: Targets besides sm_90a are compiled on the installed Triton only (module doc).
EXTRA_TARGET_TRITONS = (None,)
#: Checks that only mean something where wgmma exists (dropped off Hopper).
WGMMA_ONLY_CHECKS = ("wait", "a_regs", "tma")


def variant_archs(variant: Variant) -> tuple[str, ...]:
    """The targets a variant is gated on: its ``targets``, else sm_90a only for Gluon/TMA
    (Hopper-only), else all."""
    if variant.targets is not None:
        return tuple(variant.targets)
    if variant.hopper_only or "tma" in variant.checks or "a_regs" in variant.checks:
        return (archs.HOPPER.name,)
    return tuple(archs.ARCHES)


def build_label(version: str, arch_name: str) -> str:
    """A report's key: the Triton version, plus the target when it is not sm_90a."""
    return version if arch_name == archs.HOPPER.name else f"{version} {arch_name}"


# ------------------------------------------------------------------------------ discovery


def discover(only: str | None = None) -> Iterator[Variant]:
    """Every registered strategy's variants (``kernels.registry.compile_variants``: each
    provider once, in its module's name order); ``only`` filters by a substring of
    "kernel case"."""
    from dawin_fast.kernels import registry

    for variant in registry.compile_variants():
        if only is None or only in f"{variant.kernel} {variant.case}":
            yield variant


# ---------------------------------------------------------------------- compile (worker)


class _CompileOnlyDriver:
    """The active-driver interface ``JITFunction.run`` needs, for a GPU that is not here."""

    target = TARGET

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget(*self.target)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


def _install_compile_only_driver(target: archs.Arch = archs.HOPPER) -> None:
    from triton import knobs
    from triton.runtime.driver import driver

    compile_only = _CompileOnlyDriver()
    compile_only.target = target.gate_target
    archs.assume(target)  # the prune filters by this target's shared memory
    driver.set_active(compile_only)
    knobs.nvidia.dump_ptxas_log = True  # Triton prints its own ptxas -v log: captured below
    knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report


def _configs_of(variant: Variant) -> list[tuple[str, Any]]:
    """(label, config) for every config autotune may pick for this call."""
    from triton.runtime.autotuner import Autotuner

    fn = variant.fn
    if not isinstance(fn, Autotuner):
        return [(variant.config, None)]
    fn.nargs = dict(zip(fn.arg_names, variant.args, strict=False))
    try:
        kept = fn.prune_configs(dict(variant.kwargs))
    finally:
        fn.nargs = None
    return [(f"c{fn.configs.index(c)}", c) for c in kept]


def _describe(config, variant: Variant | None = None) -> str:
    if config is None:
        return variant.tiles if variant is not None else "-"
    tiles = " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in config.kwargs.items()
                     if k.startswith("BLOCK_"))
    return f"{tiles} w={config.num_warps} s={config.num_stages}"


def compile_variant(variant: Variant, config) -> dict:
    """Compile one (variant, config) the way ``fn[grid](...)`` would; analyse the result."""
    fn = variant.fn
    kwargs = dict(variant.kwargs)
    if config is not None:
        kwargs.update(config.all_kwargs())
        fn = fn.fn  # the autotuner's inner launcher: what Autotuner.run calls
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        compiled = fn.run(*variant.args, grid=(1,), warmup=True, **kwargs)
    seconds = time.perf_counter() - start
    result = analyze(compiled.asm["ptx"], log.getvalue())
    result["shared"] = int(compiled.metadata.shared)
    result.update(a_hazard_of(compiled.asm["cubin"]))
    result["compile_s"] = round(seconds, 2)
    return result


def analyze(ptx: str, ptxas_log: str) -> dict:
    """Target, MMA kind, A operand, main-loop wait depth, copies (PTX); registers, spills,
    local memory, serialization and other warnings (ptxas -v)."""
    if "wgmma.mma_async" in ptx:
        mma = "wgmma"
    elif re.search(r"\bmma\.sync", ptx):
        mma = "mma.sync"
    else:
        mma = "none"
    a_operand = None
    first = re.search(r"wgmma\.mma_async\S*\s+\{[^}]*\},\s*(\S)", ptx)
    if first:
        a_operand = "registers" if first.group(1) == "{" else "shared"
    regs = [int(n) for n in re.findall(r"Used (\d+) registers", ptxas_log)]
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas_log)
    stack = [int(n) for n in re.findall(r"(\d+) bytes stack frame", ptxas_log)]
    serial = [line.strip() for line in ptxas_log.splitlines()
              if re.search(r"serializ|\(C75(10|15)\)", line, re.IGNORECASE)]
    warnings = [line.strip() for line in ptxas_log.splitlines()
                if re.search(r"\bwarning\b", line, re.IGNORECASE)]
    target = re.search(r"^\s*\.target\s+(\S+)", ptx, re.MULTILINE)
    return {
        "target": target.group(1).rstrip(",") if target else None,
        "mma": mma,
        "a_operand": a_operand,
        "wait": main_loop_wait(ptx),
        "cp_async": len(re.findall(r"\bcp\.async\.c[ag]\b", ptx)),
        "tma": len(re.findall(r"\bcp\.async\.bulk\.tensor", ptx)),
        "regs": max(regs) if regs else None,
        "spill_stores": sum(int(s) for s, _ in spills),
        "spill_loads": sum(int(lo) for _, lo in spills),
        "stack": max(stack) if stack else 0,
        "serialized": [re.search(r"\((C\d+)\)", s).group(1) if re.search(r"\(C\d+\)", s)
                       else s for s in serial],
        "warnings": warnings,
    }


def sass_of(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin, with the cuobjdump of the running Triton's wheel."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True,
                              check=True)
    return done.stdout


def a_hazard_of(cubin: bytes) -> dict:
    """The register-A hazard findings of a compiled kernel (``sass_hazard``): their count
    and the first one (the report keeps one line per unit, not every finding)."""
    from .sass_hazard import register_a_hazards

    found = register_a_hazards(sass_of(cubin))
    return {"a_hazard": len(found), "a_hazard_first": found[0] if found else None}


def ptx_loops(ptx: str) -> list[tuple[int, int]]:
    """(first line, last line) of every PTX loop: a label and a later branch back to it."""
    lines = ptx.splitlines()
    labels: dict[str, int] = {}
    loops = []
    for i, line in enumerate(lines):
        label = re.match(r"\s*(\$L\w+):", line)
        if label:
            labels[label.group(1)] = i
        branch = re.search(r"\bbra(?:\.uni)?\s+(\$L\w+);", line)
        if branch and branch.group(1) in labels:
            loops.append((labels[branch.group(1)], i))
    return loops


def main_loop_wait(ptx: str) -> int | None:
    """The smallest ``wgmma.wait_group`` depth inside the main loop (the innermost loop
    holding the most wgmma), or None without such a loop or a wait in it."""
    lines = ptx.splitlines()
    best = None
    for first, last in ptx_loops(ptx):
        body = lines[first:last + 1]
        count = sum("wgmma.mma_async" in line for line in body)
        if count and (best is None or (count, first - last) > best[0]):
            best = ((count, first - last), body)
    if best is None:
        return None
    waits = [int(n) for line in best[1]
             for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", line)]
    return min(waits) if waits else None


def sample_key(row: Mapping[str, Any]) -> tuple[str, str, str, bool]:
    """What a sampled extra-target build keeps one unit of: (kernel, config, dtype and
    precision, unaligned sizes), e.g. ("rowscaled", "c3", "float32 IEEE", False)."""
    return row["kernel"], row["config"], row["case"].split(" M=")[0], ", K=" in row["case"]


def _worker(shard: int, shards: int, only: str | None, core_only: bool, out: Path,
            arch_name: str = archs.HOPPER.name, sample: bool = False) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    target = archs.ARCHES[arch_name]
    _install_compile_only_driver(target)
    import triton

    results = []
    units = []
    for variant in discover(only):
        if core_only and not variant.core or arch_name not in variant_archs(variant):
            continue
        try:
            configs = _configs_of(variant)
        except Exception as exc:  # e.g. a prune that keeps nothing: a gate failure
            configs = [("-", exc)]
        units += [(variant, label, config) for label, config in configs]
    if sample:  # the last call of each key: the registries list the largest M last
        last = {sample_key({"kernel": v.kernel, "config": label, "case": v.case}): i
                for i, (v, label, _) in enumerate(units)}
        units = [u for i, u in enumerate(units) if i in set(last.values())]
    for index, (variant, label, config) in enumerate(units, start=1):
        if (index - 1) % shards != shard:
            continue
        row = {"kernel": variant.kernel, "case": variant.case, "config": label,
               "tiles": _describe(None if isinstance(config, Exception) else config,
                                  variant),
               "checks": [c for c in variant.checks
                          if target.wgmma or c not in WGMMA_ONLY_CHECKS],
               "allow": {**variant.allow,
                         **({} if target.wgmma else variant.allow_off_hopper)},
               "order": index}
        if not target.wgmma:
            row["arch"] = arch_name
        if variant.shared_model is not None:
            # The model was read off sm_90a: elsewhere it must bound, not equal, the size.
            row["checks"] += ["model_bound", "model"] if target.wgmma else ["model_bound"]
        try:
            if isinstance(config, Exception):
                raise config
            row.update(compile_variant(variant, config))
            if variant.shared_model is not None:
                row["model_shared"] = int(variant.shared_model(config))
                if variant.shared_slack:
                    row["model_slack"] = variant.shared_slack
            row["error"] = None
        except Exception as exc:  # report every unit, not just the first failure
            row["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        results.append(row)
    out.write_text(json.dumps({"triton": build_label(triton.__version__, arch_name),
                               "results": results, "sampled": sample}))


# ------------------------------------------------------------------------------- checks


def failed_checks(row: Mapping[str, Any]) -> dict[str, str]:
    """check -> what failed, for one compiled unit (allowed ones included)."""
    if row.get("error"):
        return {"compiles": row["error"].splitlines()[0][:300]}
    out = {}
    for check in row["checks"]:
        problem = _problem(check, row)
        if problem:
            out[check] = problem
    return out


def row_arch(row: Mapping[str, Any]) -> archs.Arch:
    """The target a unit was compiled for (rows without ``arch``: sm_90a)."""
    return archs.ARCHES[row.get("arch", archs.HOPPER.name)]


def _problem(check: str, row: Mapping[str, Any]) -> str | None:
    model, slack = row.get("model_shared"), row.get("model_slack", 0)
    target = row_arch(row)
    mma = "wgmma" if target.wgmma else "mma.sync"
    if check == "compiles" and row.get("target") != target.name:
        return f"PTX targets {row.get('target')}, not {target.name}"
    if check == "smem" and row["shared"] > target.smem_limit:
        return f"{row['shared']} B of shared memory > {target.smem_limit} ({target.name})"
    if check == "spill" and (row["spill_stores"] or row["spill_loads"] or row.get("stack")):
        return (f"spills {row['spill_stores']} B stores / {row['spill_loads']} B loads, "
                f"{row.get('stack')} B stack frame")
    if check == "wgmma" and row["mma"] != mma:
        return f"dot lowered to {row['mma']}, not {mma}"
    if check == "serial" and row["serialized"]:
        return f"ptxas serialized wgmma ({', '.join(row['serialized'])})"
    if check == "warn" and row.get("warnings"):
        return f"ptxas: {'; '.join(row['warnings'])[:300]}"
    if check == "model_bound" and (model or 0) + slack < row["shared"]:
        return f"model says {model} B (+{slack} slack) < compiled {row['shared']} B"
    if check == "model" and not (model is not None and model <= row["shared"] <= model + slack):
        return (f"model says {model} B, compiled {row['shared']} B"
                + (f" (allowed: up to {slack} B more)" if slack else ""))
    if check == "wait" and (row["wait"] is None or row["wait"] < 1):
        return f"main-loop wgmma.wait_group {row['wait']}"
    if check == "a_regs" and row["a_operand"] != "registers":
        return f"wgmma A operand from {row['a_operand']}"
    if check == "tma" and not row.get("tma"):
        return "no TMA load (cp.async.bulk.tensor) in the PTX"
    if check == "a_hazard" and row.get("a_hazard") != 0:
        if row.get("a_hazard") is None:
            return "SASS not analysed for the register-A hazard"
        return (f"{row['a_hazard']} writes to a pending wgmma's register A, first: "
                f"{row.get('a_hazard_first')}")[:300]
    return None


def failures(report: Mapping[str, Any]) -> list[str]:
    """One line per unallowed failed check, over every Triton in the report."""
    out = []
    for version, rows in report["tritons"].items():
        for row in rows:
            for check, problem in failed_checks(row).items():
                if check not in row["allow"]:
                    out.append(f"Triton {version}: {row['kernel']} {row['case']} "
                               f"{row['config']} ({row['tiles']}): {check}: {problem}")
    return out


# --------------------------------------------------------------------------------- runner


def triton_paths(extra: Iterable[str] | None = None) -> list[str | None]:
    """None (the installed Triton) plus every other install to gate."""
    extra = list(extra or [])
    if not extra and os.environ.get("DAWIN_GATE_TRITONS"):
        extra = [p for p in os.environ["DAWIN_GATE_TRITONS"].split(os.pathsep) if p]
    return [None, *extra]


def gate_archs(names: Iterable[str] | None = None) -> list[str]:
    """The targets to gate: ``names``, else ``DAWIN_GATE_ARCHS`` (comma-separated), else all."""
    names = list(names or [])
    if not names and os.environ.get("DAWIN_GATE_ARCHS"):
        names = [n for n in os.environ["DAWIN_GATE_ARCHS"].split(",") if n]
    names = names or list(archs.ARCHES)
    unknown = set(names) - set(archs.ARCHES)
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}; have {list(archs.ARCHES)}")
    return [n for n in archs.ARCHES if n in names]


def run_gate(paths: list[str | None] | None = None, jobs: int | None = None,
             only: str | None = None, targets: Iterable[str] | None = None,
             sample_extra: bool = False) -> dict:
    """Compile every variant under each Triton and target (parallel worker processes); the
    report. ``sample_extra``: on sm_80/sm_89 only one unit per ``sample_key`` (CI's
    choice: every config of every kernel and dtype, not every call; the table has all)."""
    paths = triton_paths() if paths is None else paths
    targets = gate_archs(targets)
    jobs = jobs or os.cpu_count() or 1
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compile-gate-") as tmp:
        tasks = []
        builds = [(p_index, path, name) for name in targets
                  for p_index, path in enumerate(paths)
                  if name == archs.HOPPER.name or path in EXTRA_TARGET_TRITONS]
        for p_index, path, name in builds:
            for shard in range(jobs):
                out = Path(tmp) / f"{p_index}-{name}-{shard}.json"
                env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
                env["TRITON_CACHE_DIR"] = str(Path(tmp) / f"cache-{p_index}-{name}-{shard}")
                if path:
                    env["PYTHONPATH"] = os.pathsep.join(
                        [path, *filter(None, [env.get("PYTHONPATH")])])
                cmd = [sys.executable, "-m", f"{__package__}.compile_gate",
                       "--worker", f"{shard}/{jobs}", "--out", str(out), "--arch", name]
                if only:
                    cmd += ["--only", only]
                if path:
                    cmd.append("--core-only")
                if sample_extra and name != archs.HOPPER.name:
                    cmd.append("--sample")
                tasks.append((cmd, env, out))
        _run_parallel(tasks, jobs)
        tritons: dict[str, list] = {}
        core_only: list[str] = []
        sampled: list[str] = []
        for (_, _, out), (_, path, _) in zip(tasks, [b for b in builds for _ in range(jobs)],
                                             strict=True):
            data = json.loads(out.read_text())
            tritons.setdefault(data["triton"], []).extend(data["results"])
            if path and data["triton"] not in core_only:
                core_only.append(data["triton"])
            if data.get("sampled") and data["triton"] not in sampled:
                sampled.append(data["triton"])
    for rows in tritons.values():
        rows.sort(key=lambda r: r.pop("order"))
    return {"target": "sm_90a", "limit": SHARED_MEMORY_LIMIT,
            "targets": {n: archs.ARCHES[n].smem_limit for n in targets}, "tritons": tritons,
            "core_only": core_only, "sampled": sampled,
            "wall_s": round(time.perf_counter() - start, 1),
            "date": datetime.date.today().isoformat()}


def _run_parallel(tasks: list, jobs: int) -> None:
    """Run the worker commands, at most ``jobs`` at a time; raise on the first failure."""
    pending, running = list(tasks), []
    while pending or running:
        while pending and len(running) < jobs:
            cmd, env, out = pending.pop(0)
            log = open(out.with_suffix(".log"), "w+")  # noqa: SIM115 (closed below)
            running.append((subprocess.Popen(cmd, env=env, stdout=log,
                                             stderr=subprocess.STDOUT), cmd, log))
        time.sleep(0.2)
        for entry in list(running):
            proc, cmd, log = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            log.seek(0)
            output = log.read()
            log.close()
            if proc.returncode:
                for other, _, other_log in running:
                    other.kill()
                    other_log.close()
                raise RuntimeError(f"compile gate worker failed ({' '.join(cmd)}):\n"
                                   f"{output[-4000:]}")


# ------------------------------------------------------------------------------ the table


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The table's first lines: per Triton, kernels x configs and the verdicts."""
    lines = []
    for version, rows in report["tritons"].items():
        target = row_arch(rows[0]) if rows else archs.HOPPER
        mma = "wgmma" if target.wgmma else "mma.sync"
        kernels: dict[str, set] = {}
        for row in rows:
            kernels.setdefault(row["kernel"], set()).add(row["config"])
        shape = ", ".join(f"{k} {len(c)}" for k, c in kernels.items())
        ok = [r for r in rows if not r.get("error")]

        def verdict(check, rows=ok):
            bad = [r for r in rows if check in failed_checks(r)]
            allowed = [r for r in bad if check in r["allow"]]
            if not bad:
                return "yes"
            if len(allowed) == len(bad):
                return f"yes, but {len(bad)} allowed (see below)"
            return f"NO ({len(bad) - len(allowed)} failing)"

        def where(check, rows=ok):
            return sum(check in r["checks"] for r in rows)

        most = {}
        for r in ok:
            most[r["kernel"]] = max(most.get(r["kernel"], 0), r["shared"])
        max_shared = max(most.values(), default=0)
        scope = " (core variants only)" if version in report.get("core_only", []) else ""
        if version in report.get("sampled", []):
            scope += " (sampled: one call per kernel, config and dtype)"
        hopper_checks = (
            f"register A where required ({where('a_regs')} variants): {verdict('a_regs')}; "
            f"main-loop wait >= 1 where required ({where('wait')}): {verdict('wait')}; "
            f"TMA where required ({where('tma')}): {verdict('tma')}; "
            f"no register-A hazard (SASS): {verdict('a_hazard')}; " if target.wgmma
            else "Hopper-only variants (Gluon, TMA) not built; ")
        lines.append(
            f"- **Triton {version.split()[0]}, {target.name}** (limit {target.smem_limit} B "
            f"of shared memory per block){scope}: kernels × configs: {shape} "
            f"({len(rows)} compiled variants); all compile for {target.name}: "
            f"{'yes' if len(ok) == len(rows) else 'NO'}; all {mma}: {verdict('wgmma')}; "
            f"{hopper_checks}"
            f"no spills: {verdict('spill')}; no serialization: {verdict('serial')}; "
            f"no ptxas warnings: {verdict('warn')}; "
            f"max shared memory: {max_shared} B of {target.smem_limit} B "
            f"(within limit: {verdict('smem')}; per kernel: "
            f"{', '.join(f'{k} {v}' for k, v in most.items())}); "
            + (f"model = compiled: {verdict('model')}." if target.wgmma else
               f"model >= compiled: {verdict('model_bound')}."))
    return lines


def _cell(values: list) -> str:
    shown = ["-" if v is None else str(v) for v in values]
    return shown[0] if len(set(shown)) == 1 else " / ".join(shown)


def render_markdown(report: Mapping[str, Any]) -> str:
    """compiled.md: summary lines, then one table per kernel, Tritons side by side."""
    versions = list(report["tritons"])
    out = ["# What the kernels compile to (sm_90a, sm_80, sm_89)", "",
           f"Generated by `{COMMAND}` on {report['date']} (CPU, no GPU: the compile gate, "
           f"`dawin_fast/kernel_tools/compile_gate.py`); do not edit.", ""]
    out += summary_lines(report)
    out += ["", "sm_80 (A100) and sm_89 (Ada) are built on the installed Triton only, without the "
            "Hopper-only (Gluon, TMA) variants: two more targets on every Triton would add their "
            "whole cost again in CI, and the GPU machines that run Triton 3.6 are Hopper "
            "(`EXTRA_TARGET_TRITONS`)."]
    out += ["", f"Gate wall time for this table: {report['wall_s']} s (the generating machine, "
            f"all Tritons, parallel workers).", "",
            "Checks (`CHECKS`): " + "; ".join(f"`{k}`: {v}" for k, v in CHECKS.items()) + ".",
            "", "Where the Tritons a row was built on disagree, a cell shows their values in "
            "the order of its `Triton` column (e.g. `3.8.0 / 3.6.0`). "
            "`wait`: main-loop `wgmma.wait_group` depth "
            "(0: every MMA waits for the last). `A`: wgmma's A operand. `spill`: spill "
            "stores + loads + stack frame. `model`: the kernel's shared-memory model "
            "(`+slack`: what the compiled size may exceed it by). `copies`: "
            "`cp.async` / TMA instructions in the PTX (pipelined loads). `ptxas`: "
            "serialization codes and warnings. `A hazard`: writes to a pending wgmma's "
            "register-A operand found in the SASS (0: none). Sizes in bytes.", ""]
    allowed = {}
    keyed: dict[tuple, dict[str, dict]] = {}
    for version, rows in report["tritons"].items():
        for row in rows:
            keyed.setdefault((row["kernel"], row["case"], row["config"]), {})[version] = row
            for check in failed_checks(row):
                if check in row["allow"]:
                    allowed.setdefault((check, row["allow"][check]), []).append(row)
    if allowed:
        out += ["Allowed exceptions:", ""]
        out += [f"- `{check}` ({len(rows)} variants): {reason}"
                for (check, reason), rows in allowed.items()]
        out.append("")
    header = ("| case | config | tiles | Triton | MMA | A | wait | regs | spill | shared | "
              "model | copies | ptxas | A hazard | verdict |")
    kernel = None
    for (name, case, config), by_version in keyed.items():
        if name != kernel:
            kernel = name
            out += ["", f"## {name}", "", header, "|" + "---|" * 15]
        built = [v for v in versions if v in by_version]
        present = [by_version[v] for v in built]

        def col(fn, rows=present):
            return _cell([None if r.get("error") else fn(r) for r in rows])

        verdicts = []
        for r in present:
            bad = failed_checks(r)
            unallowed = [c for c in bad if c not in r["allow"]]
            verdicts.append("FAIL: " + ", ".join(unallowed) if unallowed
                            else "allowed: " + ", ".join(bad) if bad else "ok")
        out.append("| " + " | ".join([
            case, config, present[0]["tiles"], ", ".join(built), col(lambda r: r["mma"]),
            col(lambda r: {"registers": "reg", "shared": "smem"}.get(r["a_operand"])),
            col(lambda r: r["wait"]), col(lambda r: r["regs"]),
            col(lambda r: r["spill_stores"] + r["spill_loads"] + r.get("stack", 0)),
            col(lambda r: r["shared"]),
            col(lambda r: r.get("model_shared") if not r.get("model_slack")
                else f"{r['model_shared']}+{r['model_slack']}"),
            col(lambda r: f"{r['cp_async']}/{r['tma']}"),
            col(lambda r: ",".join(r["serialized"] + ["warning"] * bool(r.get("warnings")))
                or "-"),
            col(lambda r: r.get("a_hazard")),
            _cell(verdicts)]) + " |")
    return "\n".join(out) + "\n"


def dump_report(report: Mapping[str, Any]) -> str:
    """The report as JSON, one compiled unit per line (diffable, compact)."""
    head = {k: v for k, v in report.items() if k != "tritons"}
    parts = [json.dumps(head)[:-1] + ', "tritons": {']
    for i, (version, rows) in enumerate(report["tritons"].items()):
        lines = ",\n".join(json.dumps(row) for row in rows)
        parts.append(f'{", " if i else ""}{json.dumps(version)}: [\n{lines}\n]')
    return "\n".join(parts) + "}}\n"


def comparable(report: Mapping[str, Any]) -> dict:
    """The report without what changes from run to run (date, timings)."""
    return {version: [{k: v for k, v in row.items() if k != "compile_s"} for row in rows]
            for version, rows in report["tritons"].items()}


# -------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dawin_fast.kernel_tools.compile_gate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true",
                        help="write kernels/compiled.json and kernels/compiled.md")
    parser.add_argument("--render", action="store_true",
                        help="only re-render compiled.md from compiled.json")
    parser.add_argument("--triton", action="append", metavar="DIR",
                        help="another Triton install (PYTHONPATH dir) to gate, core variants")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes")
    parser.add_argument("--only", default=None, help="only variants whose 'kernel case' "
                                                     "contains this")
    parser.add_argument("--report", default=None, metavar="PATH",
                        help="also write the JSON report here (not the repo's table)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--core-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sample", action="store_true",
                        help="on sm_80/sm_89, one unit per kernel, config and dtype (CI)")
    parser.add_argument("--arch", action="append", metavar="NAME", choices=list(archs.ARCHES),
                        help="a target to gate (repeatable; default: DAWIN_GATE_ARCHS or all "
                             f"of {', '.join(archs.ARCHES)})")
    args = parser.parse_args(argv)
    if args.worker:
        args.arch = args.arch or [archs.HOPPER.name]
        shard, shards = (int(n) for n in args.worker.split("/"))
        _worker(shard, shards, args.only, args.core_only, Path(args.out), args.arch[0],
                args.sample)
        return 0
    if args.render:
        MD_PATH.write_text(render_markdown(json.loads(JSON_PATH.read_text())))
        return 0
    if args.write and args.sample:
        parser.error("--write needs every unit: drop --sample")
    report = run_gate(triton_paths(args.triton), args.jobs, args.only, args.arch, args.sample)
    for line in summary_lines(report):
        print(line)
    print(f"gate wall time: {report['wall_s']} s")
    bad = failures(report)
    for line in bad:
        print("FAIL", line)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    if args.write:
        JSON_PATH.write_text(dump_report(report))
        MD_PATH.write_text(render_markdown(report))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
