"""Compile the issue-11 kernels for sm_90a exactly as a launch would, and read the result.

No GPU needed: each variant calls the real launcher on CPU stand-in tensors, the kernel
launch (``kernel[grid](...)``) is intercepted, and the captured arguments go through the
installed Triton's own launch binder (``create_function_from_signature`` and
``JITFunction._pack_args``, as ``JITFunction.run`` does). So the signature, the
constexprs (including integer arguments equal to 1) and the divisibility attributes (16-
aligned pointers and multiples of 16) are the ones a GPU launch of that call would
produce, on whichever Triton runs this file. Then ``triton.compile`` for sm_90a with the
launch's options, ptxas's own ``-v`` log, the PTX and the SASS (nvdisasm) are read.

Run with another Triton by putting it first on PYTHONPATH (the GPU machine's 3.6.0)::

    python -m tests.kernels.fused_compile                      # JSON rows on stdout
    PYTHONPATH=/work/tri36:. python -m tests.kernels.fused_compile
    python -m tests.kernels.fused_compile --markdown kernels/compiled_fused.md \
        --triton36 /work/tri36                                  # the table, both versions

``VARIANTS`` is plain data (name, launcher, problem, config); each result row carries
the kernel, its launch signature, constexprs, attributes and options, so the list can
move into a common compile gate unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile

SMEM_LIMIT = 232448  # bytes per block on an H100 (kernels.schedule.SMEM_LIMIT)


def _variants() -> list[dict]:
    out = []

    def add(name, launcher, config, *, M, G, dtype="bf16", T=4096, N=3072, K=768, bias=True,
            **extra):
        out.append(dict(name=name, launcher=launcher, config=config,
                        problem=dict(T=T, G=G, M=M, N=N, K=K, dtype=dtype, bias=bias, **extra)))

    # Swap-AB, Gluon: every config, for the groupings it is picked for, M = 1 ... 32.
    for cfg, groups in (("w8t256", 1), ("big128", 1), ("w8pack4x64", 80), ("pack2x64", 80),
                        ("pack4x32", 160), ("pack8x16", 300)):
        # M = 3: LLVM unrolls short model loops fully (w8pack4x64 spilled at M = 3 only).
        for dtype, num_models in (("bf16", 2), ("bf16", 3), ("fp16", 8), ("fp16", 16),
                                  ("bf16", 32)):
            add(f"swapab/{cfg}/{dtype}/M{num_models}/G{groups}", "swapab_gluon", cfg,
                M=num_models, G=groups, dtype=dtype)
    add("swapab/w8t256/bf16/M1/G1/nobias", "swapab_gluon", "w8t256", M=1, G=1, bias=False)
    add("swapab/big128/bf16/M16/G64", "swapab_gluon", "big128", M=16, G=64)
    # Epilogue-scaled: every config, TMA descriptors and the pointer fallback.
    for cfg in ("e128x128", "e64x128", "e128x64"):
        add(f"epilogue/{cfg}/bf16/M2/G256", "epilogue", cfg, M=2, G=256)
        add(f"epilogue/{cfg}/fp16/M8/G1", "epilogue", cfg, M=8, G=1, dtype="fp16")
        add(f"epilogue/{cfg}/bf16/M32/G256", "epilogue", cfg, M=32, G=256)
    add("epilogue/e128x128/bf16/M2/G256/pointers", "epilogue", "e128x128", M=2, G=256,
        K=770, use_tma=False)
    add("epilogue/e64x128/fp16/M16/G3/pointers", "epilogue", "e64x128", M=16, G=3,
        use_tma=False)
    return out


VARIANTS = _variants()

# Variants the gate lets through, with the reason. The dispatcher never sends a GPU call
# to them (``kernels.dispatch``): they exist for explicit ``strategy=`` calls and the
# interpreter.
ALLOWED = {
    "epilogue/e128x128/bf16/M2/G256/pointers": (
        "K = 770: rows are not 16-byte aligned, so neither TMA nor cp.async can load them; "
        "Triton falls back to synchronous loads (wait depth 0) and spills at 8 warps. "
        "Correctness fallback for odd shapes only."
    ),
}


class _Captured(Exception):
    pass


@contextlib.contextmanager
def _capture(kernel):
    """Intercept ``kernel[grid](*args, **kwargs)``: record the call, launch nothing."""
    calls = []
    cls = type(kernel)
    original = cls.__getitem__

    def getitem(self, grid):
        def launch(*args, **kwargs):
            calls.append((args, kwargs))
            raise _Captured

        return launch

    cls.__getitem__ = getitem
    try:
        yield calls
    finally:
        cls.__getitem__ = original


def _call_launcher(variant):
    """Run the variant's launcher on CPU stand-ins; return (kernel, args, kwargs)."""
    import torch

    from dawin_fast.kernels import epilogue_scaled, fused_configs, swapab_gluon

    p = variant["problem"]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[p["dtype"]]
    T, G, M, N, K = p["T"], p["G"], p["M"], p["N"], p["K"]
    x = torch.empty(T, K, dtype=dtype)
    weight = torch.empty(M, N, K, dtype=dtype)
    bias = torch.empty(M, N, dtype=dtype) if p["bias"] else None
    coeffs = torch.empty(G, M)
    lengths = [T // G] * G
    lengths[-1] += T - sum(lengths)
    offsets = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int64)
    y = torch.empty(T, N, dtype=dtype)
    if variant["launcher"] == "swapab_gluon":
        kernel = swapab_gluon._swapab_gluon_kernel
        cfg = fused_configs.swapab_config(variant["config"])
        run = lambda: swapab_gluon.swapab_gluon_matmul(  # noqa: E731
            x, weight, coeffs, offsets, bias, y, cfg)
    else:
        kernel = epilogue_scaled._epilogue_scaled_kernel
        cfg = next(c for c in fused_configs.EPILOGUE_CONFIGS if c.name == variant["config"])
        run = lambda: epilogue_scaled.epilogue_scaled_matmul(  # noqa: E731
            x, weight, coeffs, offsets, bias, y, cfg, use_tma=p.get("use_tma"))
    with _capture(kernel) as calls:
        with contextlib.suppress(_Captured):
            run()
    args, kwargs = calls[0]
    return kernel, args, kwargs


def _launch_specialization(kernel, args, kwargs, target):
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound, specialization, options)


def _compile(kernel, signature, constexprs, attrs, options, target):
    """triton.compile with ptxas's -v log captured (Triton prints it to fd 1)."""
    import triton
    from triton import knobs
    from triton.compiler.compiler import ASTSource

    if getattr(kernel, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as source_cls
    else:
        source_cls = ASTSource
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True  # a cached kernel would not run ptxas again
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            compiled = triton.compile(source_cls(kernel, signature, constexprs, attrs),
                                      target=target, options=options.__dict__)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return compiled, log.read()


def _sass(cubin: bytes) -> str:
    import triton

    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                            "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True,
                              check=True).stdout


def _loop_ranges(ptx: str) -> list[tuple[int, int]]:
    """(start, end) character ranges of PTX loops: a label and a later branch back to it."""
    labels = {m.group(1): m.start() for m in re.finditer(r"^(\$L__\w+):", ptx, re.M)}
    ranges = []
    for m in re.finditer(r"\bbra(?:\.uni)?\s+(\$L__\w+);", ptx):
        start = labels.get(m.group(1))
        if start is not None and start < m.start():
            ranges.append((start, m.end()))
    return ranges


def analyse(ptx: str, sass: str, log: str) -> dict:
    """The compile gate's properties, read from PTX, SASS and ptxas -v."""
    loops = _loop_ranges(ptx)
    commits = [m.start() for m in re.finditer(r"wgmma\.commit_group", ptx)]
    waits = [(m.start(), int(m.group(1)))
             for m in re.finditer(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)]
    # The first wait reached after each commit inside a loop: how many wgmma groups stay
    # in flight across the loop's steady state. The loop's text may be rotated (its latch
    # block placed before the header), so the search wraps around to the loop's start.
    loop_depths = []
    for pos in commits:
        around = [(a, b) for a, b in loops if a <= pos <= b]
        if not around:
            continue
        a, b = min(around, key=lambda r: r[1] - r[0])  # the innermost loop
        after = [n for p, n in waits if pos < p <= b] or [n for p, n in waits if a <= p < pos]
        if after:
            loop_depths.append(after[0])
    hgmma = re.findall(r"HGMMA\.(\S+) (R\d+|RZ), (\S+?),", sass)
    warnings = [line.strip() for line in log.splitlines()
                if "warning" in line.lower() or re.search(r"C75\d\d|serializ", line)]
    mma = ("wgmma" if "wgmma.mma_async" in ptx
           else "mma.sync" if re.search(r"\bmma\.sync", ptx) else "none")
    regs = re.findall(r"Used (\d+) registers", log)
    spill_st = re.findall(r"(\d+) bytes spill stores", log)
    spill_ld = re.findall(r"(\d+) bytes spill loads", log)
    setmaxnreg = sorted({int(v) for v in re.findall(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+(\d+)",
                                                     ptx)})
    return dict(
        mma=mma,
        hgmma=len(hgmma),
        hgmma_shapes=sorted({h[0] for h in hgmma}),
        register_a=any(h[2].startswith("R") for h in hgmma),
        loop_wait_depth=min(loop_depths) if loop_depths else None,
        waits=sorted({n for _, n in waits}),
        regs=int(regs[-1]) if regs else None,
        consumer_regs_max=setmaxnreg[-1] if setmaxnreg else None,
        spill_bytes=sum(int(v) for v in spill_st + spill_ld),
        ptxas_warnings=warnings,
        serialized=any(re.search(r"serializ|C7515|C7510", w) for w in warnings),
        tma_loads=len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
        cp_async=len(re.findall(r"cp\.async\.cg", ptx)),
        ldmatrix=len(re.findall(r"ldmatrix", ptx)),
        local_memory=bool(re.search(r"\b(STL|LDL)\b", sass)),
    )


def compile_variant(variant: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", 90, 32)
    row = dict(name=variant["name"], triton=triton.__version__, launcher=variant["launcher"],
               config=variant["config"], problem=variant["problem"])
    try:
        kernel, args, kwargs = _call_launcher(variant)
        options, signature, constexprs, attrs = _launch_specialization(kernel, args, kwargs,
                                                                       target)
        names = kernel.arg_names
        row.update(
            kernel=f"{kernel.fn.__module__}:{kernel.fn.__name__}",
            signature={names[k[0]] if isinstance(k, tuple) else k: v
                       for k, v in signature.items() if v != "constexpr"},
            constexprs={names[k[0]]: _plain(v) for k, v in constexprs.items()},
            attrs={names[k[0]]: _plain(v) for k, v in attrs.items() if v},
            options={k: getattr(options, k) for k in ("num_warps", "num_stages", "maxnreg")},
        )
        compiled, log = _compile(kernel, signature, constexprs, attrs, options, target)
        ptx = compiled.asm["ptx"]
        row.update(analyse(ptx, _sass(compiled.asm["cubin"]), log), ok=True,
                   smem=compiled.metadata.shared, sm90a=".target sm_90a" in ptx)
    except Exception as exc:  # report every variant, not just the first failure
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-3000:])
    return row


def _plain(value):
    value = getattr(value, "value", value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def run_all(names: list[str] | None = None) -> list[dict]:
    return [compile_variant(v) for v in VARIANTS if names is None or v["name"] in names]


def start_subprocess(triton_path: str | None = None) -> subprocess.Popen:
    """Start this module in a fresh interpreter (no TRITON_INTERPRET), optionally with
    another Triton first on the path. ``collect`` returns its rows."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    paths = ([triton_path] if triton_path else []) + [root, env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return subprocess.Popen([sys.executable, "-m", "tests.kernels.fused_compile"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=root)


def collect(proc: subprocess.Popen, timeout: int = 1800) -> list[dict]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"compile run failed:\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_in_subprocess(triton_path: str | None = None) -> list[dict]:
    return collect(start_subprocess(triton_path))


def problems(row: dict) -> list[str]:
    """What the gate rejects in one compiled variant (empty: the variant passes)."""
    if not row.get("ok"):
        return [f"does not compile: {row.get('error')}"]
    found = []
    if not row["sm90a"]:
        found.append("not compiled for sm_90a")
    if row["mma"] != "wgmma":
        found.append(f"MMA is {row['mma']}, not wgmma")
    if row["launcher"] == "swapab_gluon" and not row["register_a"]:
        found.append("wgmma A operand not in registers")
    if row["loop_wait_depth"] is None or row["loop_wait_depth"] < 1:
        found.append(f"main-loop wgmma wait depth {row['loop_wait_depth']} (< 1)")
    if row["spill_bytes"] or row["local_memory"]:
        found.append(f"spills ({row['spill_bytes']} bytes, local memory {row['local_memory']})")
    if row["serialized"]:
        found.append(f"ptxas serialization: {row['ptxas_warnings']}")
    if row["ptxas_warnings"]:
        found.append(f"ptxas warnings: {row['ptxas_warnings']}")
    if row["smem"] > SMEM_LIMIT:
        found.append(f"shared memory {row['smem']} B > {SMEM_LIMIT} B")
    if row["tma_loads"] == 0 and row["problem"].get("use_tma", True):
        found.append("no TMA (cp.async.bulk.tensor) loads")
    return found


def markdown(rows_by_version: dict[str, list[dict]]) -> str:
    lines = []
    for version, rows in rows_by_version.items():
        bad = [r["name"] for r in rows if problems(r) and r["name"] not in ALLOWED]
        ok = [r for r in rows if r.get("ok")]
        lines += [
            f"## Triton {version}",
            "",
            f"{len(rows)} variants, {len(rows) - len(bad)} pass the gate"
            + (f"; failing: {', '.join(bad)}" if bad else "")
            + (f"; allowed exceptions: {', '.join(ALLOWED)}" if ALLOWED else "")
            + f". Max shared memory {max((r['smem'] for r in ok), default=0)} B"
            f" (limit {SMEM_LIMIT}).",
            "",
            "| variant | MMA | HGMMA shape | A in regs | loop wait | regs (consumer max) "
            "| spills | smem B | TMA | ldmatrix | ptxas warnings |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if not r.get("ok"):
                lines.append(f"| {r['name']} | does not compile: "
                             f"{r['error'].splitlines()[-1][:120]} |||||||||")
                continue
            regs = f"{r['regs']}" + (f" ({r['consumer_regs_max']})"
                                     if r["consumer_regs_max"] else "")
            lines.append(
                f"| {r['name']} | {r['mma']} | {','.join(r['hgmma_shapes'])} "
                f"| {'yes' if r['register_a'] else 'no'} | {r['loop_wait_depth']} | {regs} "
                f"| {r['spill_bytes']} | {r['smem']} | {r['tma_loads']} | {r['ldmatrix']} "
                f"| {'; '.join(r['ptxas_warnings']) or 'none'} |")
        lines.append("")
    lines += ["Allowed exceptions:", ""] + [f"- `{k}`: {v}" for k, v in ALLOWED.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", help="write the table for this Triton (and --triton36)")
    parser.add_argument("--triton36", help="path of another Triton to compile with too")
    parser.add_argument("--only", nargs="*", help="variant names")
    args = parser.parse_args()
    if not args.markdown:
        print(json.dumps(run_all(args.only)))
        return
    import triton

    procs = [start_subprocess()] + ([start_subprocess(args.triton36)] if args.triton36 else [])
    rows = {}
    for proc in procs:
        got = collect(proc)
        rows[got[0]["triton"] if got else triton.__version__] = got
    header = ("# Compiled issue-11 kernels (sm_90a, launch specialization)\n\n"
              "Generated by `python -m tests.kernels.fused_compile --markdown "
              f"{args.markdown} --triton36 /work/tri36`; do not edit by hand.\n\n")
    with open(args.markdown, "w", encoding="utf-8") as f:
        f.write(header + markdown(rows))


if __name__ == "__main__":
    main()
