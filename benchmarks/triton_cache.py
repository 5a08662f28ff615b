"""A warm Triton cache for the first-contact call, built here, carried, re-keyed there.

    # here: the GPU machine's Triton, 3.6.0, in a git-ignored folder in front of the path
    python -m pip install --no-deps --target .triton36 triton==3.6.0
    PYTHONPATH=.triton36 python -m benchmarks.triton_cache build .tcache --jobs 2
    # there (gpu_session's first-contact stage does it with --triton-cache-from .tcache):
    python -m benchmarks.triton_cache transplant .tcache /tmp/dawin-first-contact-triton-cache

The build refuses to run under any other Triton (``REQUIRED_TRITON``: a cache of another
version transplants nothing) and says which one it found; its last line names the Triton
it built with ("... with Triton 3.6.0 ...").

**build** compiles, for sm_90a under the compile gate's compile-only driver
(``kernel_tools/compile_gate.py``), every kernel variant the first-contact stage launches: each
distinct (kernel, config, M, dtype, one group or many) of the numerics cases (all of them,
``numerics_more`` included), the P1-P4 layer cases and the e2e forward, planned by the
launchers' own ``plan_*`` functions on CPU stand-in tensors of the real shapes, and every
config autotune may pick for the autotuned kernels. It keeps only what a cache hit reads
(the cubin, the metadata JSON, the group file) and a manifest of each entry's cache-key
parts, recorded from Triton's own ``get_cache_key`` call.

**Why a plain copy cannot hit.** Triton 3.6 names a cache entry
sha256(f"{triton_key()}-{src.hash()}-{backend.hash()}-{options.hash()}-{env}"), and
``triton_key()`` hashes Triton's own Python files *and the bytes of libtriton.so*. This
machine's Triton 3.6.0 is the cp311 wheel, the GPU machine runs Python 3.12 (the cp312
wheel): the two libtriton.so differ, so every key differs. Also, the group file stores
absolute paths. So **transplant**, on the GPU machine: computes its ``triton_key()``,
backend hash (ptxas version + arch) and cache-invalidating environment; re-keys an entry
only where the Triton version, every Python-file hash, the backend hash, the options and
the environment are equal and the libtriton.so hash is the only difference (same release,
same compiler sources, another Python's extension build); then writes it under the new
name with its paths rewritten. Anything else: nothing is transplanted, and the report says
why. Either way the children's compilation listener counts the hits and misses, and the
plan's estimate assumes none.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

KEEP_SUFFIXES = (".cubin", ".json")  # what CompiledKernel reads on a hit (+ __grp__ files)
#: The GPU machine's Triton: the only version whose entries the transplant can re-key.
REQUIRED_TRITON = "3.6.0"


class WrongTriton(RuntimeError):
    """The build runs under another Triton than the GPU machine's."""


def check_triton(version: str | None = None) -> str:
    """The Triton this process imports, if it is ``REQUIRED_TRITON``; else WrongTriton."""
    if version is None:
        import triton

        version = triton.__version__
    if version != REQUIRED_TRITON:
        raise WrongTriton(
            f"the cache build needs Triton {REQUIRED_TRITON} (the GPU machine's), found "
            f"Triton {version}: `python -m pip install --no-deps --target .triton36 "
            f"triton=={REQUIRED_TRITON}`, then `PYTHONPATH=.triton36 python -m "
            f"benchmarks.triton_cache build .tcache`")
    return version


def _b32(hex_key: str) -> str:
    return base64.b32encode(bytes.fromhex(hex_key)).decode("utf-8").rstrip("=")


# ------------------------------------------------------------------------------- build


def calls() -> list[tuple]:
    """(strategy, rows, groups, M, N, K, dtype, gluon) of one call per compile variant of
    the whole first-contact stage (every numerics case, layers, e2e, the smoke launches
    being numerics cases)."""
    from benchmarks import first_contact as fc

    work = fc.Work()
    cases = fc.numerics_cases(toy=False)
    described = fc.items("numerics", toy=False, gluon=True)
    # As the stage runs them: the Gluon cases under DAWIN_FAST_GLUON=1, every case under 0
    # (numerics_more runs what is left with it off); the benchmarks with Gluon on, and off
    # (what they run when the Gluon child fails).
    fc.plan_numerics(work, [c for c, i in zip(cases, described, strict=True) if i.gluon],
                     "gluon", gluon=True)
    fc.plan_numerics(work, cases, "numerics", gluon=False)
    for gluon in (True, False):
        fc.plan_layers(work, fc.layer_cases(toy=False), gluon=gluon)
        fc.plan_e2e(work, gluon=gluon)
    # An autotuned kernel's keys differ by config index only: one call covers them all.
    specs = {(key[:-1] if key[0] in ("combine", "rowscaled") else key): call
             for key, call in work.calls.items()}
    return list(specs.values())


def plan_units(call: tuple) -> list[tuple]:
    """(label, fn, args, kwargs, configs) to compile for one call: the launcher's plan on
    CPU stand-ins (``compile_gate.stand_in_call``), every config autotune may keep."""
    from dawin_fast.kernel_tools import compile_gate
    from dawin_fast.kernels import dispatch
    from dawin_fast.kernels.epilogue_scaled import plan_epilogue_scaled
    from dawin_fast.kernels.fused_configs import epilogue_config, swapab_config, twin_config
    from dawin_fast.kernels.interp_matmul import OLD_STRATEGIES, plan_launch
    from dawin_fast.kernels.swapab_gluon import plan_swapab_gluon
    from dawin_fast.kernels.swapab_twin import plan_swapab_twin
    from dawin_fast.kernels.wstat_gluon import plan_wstat_gluon
    from dawin_fast.kernels.wstat_twin import plan_wstat_twin

    strategy, rows, groups, m, n, k, dtype, gluon = call
    lengths = [rows] if groups == 1 else [rows // groups] * groups
    lengths[-1] += rows - sum(lengths)
    tensors = compile_gate.stand_in_call(lengths, m, n, k, dtype)
    label = f"{strategy} {str(dtype).removeprefix('torch.')} M={m} G={groups} N={n} K={k}"
    if strategy in OLD_STRATEGIES:
        launch = plan_launch(*tensors, strategy)
        variant = compile_gate.Variant(strategy, label, launch.kernel, launch.args,
                                       launch.kwargs)
        return [(label, launch.kernel, launch.args, launch.kwargs,
                 [c for _, c in compile_gate._configs_of(variant)])]
    config = dispatch.best_config(strategy, rows, groups, m, n, k)
    if strategy == "epilogue":
        plan = plan_epilogue_scaled(*tensors, epilogue_config(config, dtype, False))
    elif strategy == "wstat":  # as dispatch.launch: Gluon where its resident tile fits
        plan = (plan_wstat_gluon(*tensors, dispatch.wstat_config(config))
                if dispatch.wstat_on_gluon(gluon, tensors[0], tensors[1], config)
                else plan_wstat_twin(*tensors, dispatch.wstat_twin_config(config, dtype)))
    elif gluon:
        plan = plan_swapab_gluon(*tensors, swapab_config(config))
    else:
        plan = plan_swapab_twin(*tensors, twin_config(config, dtype))
    return [(f"{label} {config}", plan.kernel, plan.args, plan.kwargs, [None])]


def _record_keys(manifest: dict) -> None:
    """Wrap Triton's get_cache_key: each entry's key parts, by its cache folder name."""
    import triton.compiler.compiler as compiler
    from triton.runtime.cache import triton_key

    original = compiler.get_cache_key

    def recording(src, backend, options, env_vars):
        key = original(src, backend, options, env_vars)
        folder = _b32(hashlib.sha256(key.encode("utf-8")).hexdigest())
        manifest[folder] = dict(src=src.hash(), backend=backend.hash(), options=options.hash(),
                                env=str(sorted(env_vars.items())), name=src.name)
        return key

    compiler.get_cache_key = recording
    manifest["__triton_key__"] = triton_key()


def build_worker(shard: int, shards: int, out: Path) -> None:
    """Compile this shard's units into $TRITON_CACHE_DIR; write its manifest part."""
    os.environ.pop("TRITON_INTERPRET", None)
    check_triton()
    from dawin_fast.kernel_tools import compile_gate

    compile_gate._install_compile_only_driver()
    from triton import knobs

    knobs.nvidia.dump_ptxas_log = False
    knobs.compilation.always_compile = False
    manifest: dict = {}
    _record_keys(manifest)
    errors, index = [], 0
    for call in calls():
        for label, fn, args, kwargs, configs in plan_units(call):
            for config in configs:
                index += 1
                if (index - 1) % shards != shard:
                    continue
                kw = dict(kwargs)
                target = fn
                if config is not None:
                    kw.update(config.all_kwargs())
                    target = fn.fn
                try:
                    target.run(*args, grid=(1,), warmup=True, **kw)
                except Exception as error:  # noqa: BLE001 (reported; the rest compiles)
                    errors.append(f"{label} {config}: {type(error).__name__}: {error}"[:300])
    out.write_text(json.dumps(dict(manifest=manifest, errors=errors, units=index)))


def build(dest: Path, jobs: int) -> dict:
    """Compile in ``jobs`` worker processes, keep what a hit reads, write the manifest."""
    check_triton()  # before anything is removed or compiled
    start = time.perf_counter()
    cache = dest / "cache"
    shutil.rmtree(dest, ignore_errors=True)
    cache.mkdir(parents=True)
    procs = []
    for shard in range(jobs):
        env = dict(os.environ, TRITON_CACHE_DIR=str(cache))
        env.pop("TRITON_INTERPRET", None)
        part = dest / f"part-{shard}.json"
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "benchmarks.triton_cache", "worker", str(part),
             "--shard", f"{shard}/{jobs}"], env=env), part))
    manifest, errors, units = {}, [], 0
    for proc, part in procs:
        if proc.wait():
            raise RuntimeError(f"cache build worker failed: exit {proc.returncode}")
        data = json.loads(part.read_text())
        manifest.update(data["manifest"])
        errors += data["errors"]
        units = data["units"]
        part.unlink()
    triton_key = manifest.pop("__triton_key__")
    for entry in cache.iterdir():
        for f in entry.iterdir():
            if f.is_dir() or not (f.name.startswith("__grp__") or f.suffix in KEEP_SUFFIXES):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    entries = {e.name: manifest[e.name] for e in cache.iterdir() if e.name in manifest}
    import triton

    report = dict(triton=triton.__version__, python=sys.version.split()[0],
                  triton_key=triton_key, entries=entries, units=units, errors=errors,
                  seconds=round(time.perf_counter() - start, 1),
                  bytes=sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()))
    (dest / "manifest.json").write_text(json.dumps(report, indent=1))
    return report


# -------------------------------------------------------------------------- transplant


def _key_parts(key: str, version: str) -> list[str]:
    return [version, *key.removeprefix(version).split("-")]


def transplant(carried: Path, cache: Path, target: tuple = ("cuda", 90, 32)) -> dict:
    """Re-key the carried entries for this machine's Triton (module docstring); a report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import get_cache_invalidating_env_vars, make_backend
    from triton.runtime.cache import triton_key

    manifest_path = carried / "manifest.json"
    if not manifest_path.exists():
        return dict(transplanted=0, reason=f"no {manifest_path}")
    manifest = json.loads(manifest_path.read_text())
    here_key = triton_key()
    report = dict(carried_triton=manifest["triton"], carried_python=manifest["python"],
                  triton=triton.__version__, python=sys.version.split()[0],
                  carried_entries=len(manifest["entries"]), transplanted=0)
    if manifest["triton"] != triton.__version__:
        return dict(report, reason="another Triton version: nothing transplanted")
    ours = _key_parts(manifest["triton_key"], manifest["triton"])
    theirs = _key_parts(here_key, triton.__version__)
    differing = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b]
    report.update(triton_key_parts=len(theirs), differing_parts=len(differing),
                  same_triton_key=here_key == manifest["triton_key"])
    if len(ours) != len(theirs) or len(differing) > 1:
        return dict(report, reason="Triton's Python sources differ (more than the libtriton "
                                   "hash): nothing transplanted")
    backend = make_backend(GPUTarget(*target)).hash()
    env = str(sorted(get_cache_invalidating_env_vars().items()))
    cache.mkdir(parents=True, exist_ok=True)
    refused: dict[str, int] = {}
    for folder, parts in manifest["entries"].items():
        why = ("backend (ptxas version or arch)" if parts["backend"] != backend
               else "cache-invalidating environment" if parts["env"] != env else None)
        if why:
            refused[why] = refused.get(why, 0) + 1
            continue
        key = f"{here_key}-{parts['src']}-{backend}-{parts['options']}-{env}"
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        dest = cache / _b32(digest)
        dest.mkdir(exist_ok=True)
        for f in (carried / "cache" / folder).iterdir():
            if f.name.startswith("__grp__"):
                paths = json.loads(f.read_text())["child_paths"]
                paths = {name: str(dest / name) for name in paths
                         if (carried / "cache" / folder / name).exists()}
                (dest / f.name).write_text(json.dumps({"child_paths": paths}))
            elif f.suffix == ".json":
                meta = json.loads(f.read_text())
                meta["hash"] = digest
                (dest / f.name).write_text(json.dumps(meta))
            else:
                shutil.copyfile(f, dest / f.name)
        report["transplanted"] += 1
    return dict(report, refused=refused, backend=backend,
                reason="re-keyed: only the libtriton.so hash differed" if differing
                else "same triton_key: copied with paths rewritten")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "transplant", "worker"))
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shard", default="0/1")
    args = parser.parse_args(argv)
    if args.command == "worker":
        shard, shards = map(int, args.shard.split("/"))
        build_worker(shard, shards, Path(args.paths[0]))
        return 0
    if args.command == "build":
        try:
            report = build(Path(args.paths[0]), args.jobs)
        except WrongTriton as error:
            print(f"triton_cache build: {error}", file=sys.stderr)
            return 2
        print(f"built {len(report['entries'])} entries ({report['units']} units, "
              f"{report['bytes'] / 2**20:.1f} MiB) with Triton {report['triton']} "
              f"(Python {report['python']}) in {report['seconds']} s; "
              f"{len(report['errors'])} errors")
        for error in report["errors"]:
            print(f"  {error}")
        return 1 if report["errors"] else 0
    report = transplant(Path(args.paths[0]), Path(args.paths[1]))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
