"""One driver for the GPU sessions: every stage writes all it has to $OUT.

    bash benchmarks/gpu_session.sh STAGE [STAGE ...] [options]   # on the device machine
    python -m benchmarks.gpu_session STAGE [STAGE ...] [--out DIR] [--budget S] [options]

The runbook of the first call (the exact device call, its carry and timeout, what to
fetch) is kernels/RUNBOOK.md. Stages, each fitting one device call (<= 10 min):

* ``correctness``: pytest on CUDA in four runs, most important first, each with its own
  JUnit XML and a share of the stage's budget: ``gluon`` (the fused kernels, the Gluon
  kernel included, against the float64 reference; dispatch on a real Hopper), ``core``
  (the op with bf16 and int64 addressing, one-hot, the ViT and dawinize equivalences, the
  CUDA-graph replay of a whole DaWinViT forward, torch.compile, pipeline, bad inputs),
  ``core_gluon`` (the op and module tests again with DAWIN_FAST_GLUON=1: what flipping
  its default would ship), ``rest`` (the other tests, without the compile gate, which
  needs no GPU, the benchmarks, which have their own stages, and the CPU-only gloo tests).
* ``layers``: every P1-P4 layer case, every method side by side: the fused op's
  default, each kernel strategy forced (fused_combine, fused_rowscaled, fused_swapab with
  Gluon under --gluon on, fused_epilogue), cuBLAS on the pre-merged weight, eager
  materialize, einsum + torch._grouped_mm; CUDA events, warm-up, median of >= 20 calls,
  L2 flushed; target cases (P1-P4) first.
* ``compiled``: the torch.compile(max-autotune) materialize baseline (tens of seconds of
  autotuning per shape) on P1's cases, the only target judged against it.
* ``e2e``: whole ViT-B/32 DaWin, 1024 images, bf16 (P5, P6).
* ``backend``: ``benchmarks/backend.py --device cuda`` (optional; WEMoE only where
  fusion_bench is installed, which the GPU machine is not).
* ``render``: ``benchmarks/render.py`` over the stage files under ``--from`` folders.
* ``first-contact``: the first GPU call, alone: the self-check, ceilings measured in the
  call, production-shape numerics and 10-launch repeatability (the Gluon cases in their
  own child after a smoke launch of each Gluon kernel), P1-P4 at ViT-B/32 shapes with
  every strategy and the baselines, P5/P6, RESULTS.md naming the card, in 450 s of work
  (``benchmarks/first_contact.py``: a child that dies on a CUDA error or a hang is
  restarted without that kernel; ``--triton-cache-from`` re-keys a cache built by
  ``benchmarks/triton_cache.py``).
  ``plan first-contact`` prints its counted work, ending ``first-contact: estimated N s``;
  ``dry-run first-contact`` runs it at toy sizes on a CPU.
* ``dry-run``: correctness, layers, compiled, e2e and render on this machine at toy sizes
  with small selections (a CPU test of the driver; backend.py has no toy size).
* ``plan``: print the layer and compiled stages' work (measurements, Triton compile
  variants, autotune runs) and its estimated seconds; runs nothing.

Every stage writes ``<stage>.json`` (environment, exact commands, each run's exit code,
time and JUnit counts, the benchmark records, errors), ``<stage>.log`` (all output),
``<stage>.md`` (summary, tables) and its runs' files: at most 8, rewritten after each run,
so a stage stopped from outside still leaves what it had. ``--pack`` folds all but the
.md and .json into ``<stage>.tar.gz`` (several stages in one call). A stage never stops
silently: a run past its share of the budget gets SIGINT (pytest then writes its XML and
summary), a benchmark past the stage's deadline is skipped and recorded as such, a crash
is recorded with its traceback, and the exit code is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("correctness", "layers", "compiled", "e2e", "backend", "render", "first-contact")
DEFAULT_BUDGET_S = 530.0  # of a device call's 600 s: start-up, wheel install, margin
FIRST_CONTACT_BUDGET_S = 450.0  # one call's work, most important first
GRACE_S = 45.0  # after SIGINT, for pytest to write its JUnit XML and summary
TEST_TIMEOUT_S = 300  # one correctness test (compiles every config of a new shape: minutes)

# Pytest selections of the correctness stage (GPU). The compile gate needs no GPU (CI runs
# it), the benchmarks have their own stages, and the gloo tests run on the CPU anyway.
GPU_ONLY_ELSEWHERE = ["--ignore=tests/kernels/test_kernel_compile.py",
                      "--ignore=tests/test_distributed.py",
                      "--ignore=tests/app/test_cli_distributed.py"]
CORE_TESTS = ["tests/test_interp_linear.py", "tests/test_use_strategy.py",
              "tests/test_one_hot.py", "tests/nn",
              "tests/test_op_compile.py", "tests/test_pipeline.py",
              "tests/test_pipeline_batches.py", "tests/test_bad_inputs.py"]
CORE_GLUON_TESTS = ["tests/test_interp_linear.py", "tests/test_one_hot.py", "tests/nn",
                    "tests/test_pipeline.py"]
GLUON_TESTS = ["tests/kernels/test_swapab_epilogue.py", "tests/kernels/test_dispatch.py"]
# Share of the stage budget each correctness run may use at most (the rest gets the rest).
CORRECTNESS_CAPS = {"gluon": 0.30, "core": 0.40, "core_gluon": 0.25}
DRY_CORRECTNESS = {"gluon": ["tests/kernels/test_dispatch.py", "-k", "cheapest or closed_form"],
                   "core": ["tests/nn/test_vit.py", "-k", "cuda_graph or gpu_equivalence"]}

# Benchmark selections. Dry runs take one toy case each.
LAYER_SELECT = "not materialize_compiled"
# P1's cases (one group of >= 8k rows, M=2): the only target judged against torch.compile.
COMPILED_SELECT = "materialize_compiled and one_group and M2 and not 8x50"
DRY_LAYER_CASE = "toy-fc2-per_sample"
# The compiled stage's dry run times premerged on a toy case instead of compiling: Inductor
# takes ~20 s on this CPU, and the suite's benchmark tests run materialize_compiled there.
DRY_COMPILED_SELECT = "premerged and toy-qkv-one_group"
# backend.py has no toy size (minutes on a CPU): not in the dry run.
DRY_RUN_STAGES = ("correctness", "layers", "compiled", "e2e", "render")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


ENV_PROBE = r"""
import json, os, platform, sys
from importlib.metadata import version, PackageNotFoundError
info = {"python": platform.python_version(), "executable": sys.executable}
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
for name in ("torch", "triton", "open_clip_torch", "timm", "pytest", "pytest-benchmark",
             "hypothesis", "numpy"):
    info[name] = v(name)
try:
    import torch
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}",
                    sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info["device"] = "cpu (no GPU: toy sizes; times mean nothing)"
except Exception as error:  # recorded, not raised: the stage goes on and says so
    info["torch_error"] = repr(error)
try:
    import dawin_fast.kernels.dispatch as dispatch
    info["gluon_available"] = dispatch.GLUON_AVAILABLE
except Exception as error:
    info["dawin_fast_error"] = repr(error)
print(json.dumps(info))
"""


_probed: dict = {}


def environment(env: dict[str, str]) -> dict:
    """Versions, device and settings, probed once per driver in a child process (the
    driver itself never creates a CUDA context, so the benchmarks' memory numbers are
    theirs alone)."""
    if not _probed:
        try:
            probe = subprocess.run([sys.executable, "-c", ENV_PROBE], capture_output=True,
                                   text=True, timeout=120, env=env, cwd=ROOT)
            _probed.update(json.loads(probe.stdout.strip().splitlines()[-1]))
        except Exception as error:  # noqa: BLE001 (recorded)
            _probed["probe_error"] = repr(error)
        _probed["commit"] = os.environ.get("DAWIN_COMMIT") or _git_commit()
    return {**_probed, "date": now(), "gluon": env.get("DAWIN_FAST_GLUON", "0"),
            "nvidia_smi": _nvidia_smi()}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, cwd=ROOT).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _nvidia_smi() -> str | None:
    query = ("name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,"
             "temperature.gpu,utilization.gpu,memory.used,memory.total")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def junit_summary(path: Path) -> dict:
    """Counts and the failing tests (with their first message line) of a JUnit XML."""
    if not path.exists():
        return {"junit": "missing"}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        return {"junit": f"unreadable: {error}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                message = (node.get("message") or node.text or "").strip().splitlines()
                failed.append(f"{case.get('classname')}::{case.get('name')} ({kind}): "
                              f"{(message[0] if message else '')[:240]}")
    counts["failed_tests"] = failed
    return counts


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, which an ignored SIGINT (a
    shell's background job) would otherwise pass on, so that the limit's SIGINT stops it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Stage:
    """One stage's files, runs and records; its JSON is rewritten after every run."""

    def __init__(self, name: str, out: Path, budget_s: float, args: argparse.Namespace):
        self.name, self.out, self.args = name, out, args
        self.start = time.time()
        self.deadline = self.start + budget_s
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / f"{name}.log"
        self.log = open(self.log_path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.data: dict = {"stage": name, "status": "running", "started": now(),
                           "budget_s": budget_s, "dry_run": args.dry_run,
                           "driver": "python -m benchmarks.gpu_session " + " ".join(
                               map(shlex.quote, sys.argv[1:])),
                           "commands": [], "runs": [], "records": [], "errors": []}

    def remaining(self) -> float:
        return self.deadline - time.time()

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def save(self) -> None:
        path = self.out / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n", encoding="utf-8")
        tmp.replace(path)

    def run(self, label: str, argv: list[str], env: dict[str, str], timeout: float,
            grace: float | None = None) -> dict:
        """Run a command with its output streamed to the log and to stdout; past
        ``timeout`` it gets SIGINT (pytest then writes its XML and summary), then SIGKILL
        after ``grace`` seconds (default ``GRACE_S``)."""
        shown = shown_command(argv, env, self.out)
        self.data["commands"].append(shown)
        self.say(f"\n=== {self.name}/{label}: {shown}  (limit {timeout:.0f} s)")
        begin = time.time()
        record = {"label": label, "command": shown, "limit_s": round(timeout, 1),
                  "timed_out": False}
        try:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True, preexec_fn=_default_sigint)
        except OSError as error:
            record.update(returncode=None, error=repr(error), seconds=0.0)
            self.data["runs"].append(record)
            self.save()
            return record
        pump = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        pump.start()
        try:
            proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            record["timed_out"] = True
            self.say(f"=== {self.name}/{label}: past its {timeout:.0f} s limit: SIGINT")
            self._signal(proc, signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S if grace is None else grace)
            except subprocess.TimeoutExpired:
                self.say(f"=== {self.name}/{label}: still running: SIGKILL")
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        pump.join(timeout=10)
        record.update(returncode=proc.returncode, seconds=round(time.time() - begin, 1))
        self.say(f"=== {self.name}/{label}: exit {proc.returncode} after "
                 f"{record['seconds']:.0f} s{' (timed out)' if record['timed_out'] else ''}")
        self.data["runs"].append(record)
        self.save()
        return record

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            self.log.write(line)
        sys.stdout.flush()

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the run's own session: pytest and its children
        except ProcessLookupError:
            pass

    def pytest(self, label: str, args: list[str], env: dict[str, str], timeout: float,
               xml_name: str | None = None, verbose: bool = False) -> dict:
        """A pytest run with its JUnit XML. ``verbose``: one line per test (the benchmarks:
        if a run must be killed, the log names the test it was in)."""
        xml = self.out / (xml_name or f"{self.name}-{label}.xml")
        argv = [sys.executable, "-m", "pytest", *args, "-v" if verbose else "-q",
                "-p", "no:cacheprovider", "-rfE", "--durations=15", f"--junitxml={xml}"]
        record = self.run(label, argv, env, timeout)
        record.update(junit_summary(xml))
        self.save()
        return record

    def finish(self, status: str | None = None) -> int:
        runs = self.data["runs"]
        if status is None:
            bad = [r for r in runs if r.get("returncode") not in (0,) or r.get("timed_out")
                   or r.get("failures") or r.get("errors")]
            status = "failed" if bad or self.data["errors"] else "ok"
        self.data.update(status=status, finished=now(),
                         seconds=round(time.time() - self.start, 1))
        self.save()
        self.say(f"\n=== stage {self.name}: {status} in {self.data['seconds']:.0f} s; files in "
                 f"{self.out}")
        self.log.close()
        return 0 if status == "ok" else 1


HIDDEN_ENV = ("DAWIN_BENCH_DEADLINE", "DAWIN_BENCH_RECORDS", "PYTHONUNBUFFERED")


def shown_command(argv: list[str], env: dict[str, str], out: Path) -> str:
    """A command as recorded: the settings that change results (DAWIN_FAST_GLUON and any
    other variable differing from the driver's), `python` for this interpreter, and
    $OUT for the output folder; the driver's own bookkeeping variables are left out."""
    changed = {k: v for k, v in env.items()
               if os.environ.get(k) != v and k not in HIDDEN_ENV}
    words = [f"{k}={shlex.quote(v)}" for k, v in sorted(changed.items())]
    words += ["python" if a == sys.executable else shlex.quote(a).replace(str(out), "$OUT")
              for a in argv]
    return " ".join(words)


def child_env(gluon: bool | None) -> dict[str, str]:
    """The children's environment: unbuffered, no Triton interpreter (on a CPU the
    benchmark stages time the PyTorch path; the tests set the interpreter themselves), and
    the model's dispatch (``DAWIN_FAST_MEASURE=0``): measuring would time every candidate
    of every new call shape, work no plan counts and no carried cache holds."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", DAWIN_FAST_MEASURE="0")
    env.pop("TRITON_INTERPRET", None)
    env.pop("PYTEST_ADDOPTS", None)
    if gluon is not None:
        env["DAWIN_FAST_GLUON"] = "1" if gluon else "0"
    return env


# ------------------------------------------------------------------------------ stages


def xdist_workers(requested: int | None, cuda: bool) -> int:
    """pytest-xdist workers for the correctness runs: on a GPU machine, compiles dominate
    (every new shape or M autotunes and compiles every kernel config, ~2 s each, one CPU
    core apiece), so they run in parallel on its cores; 0 where xdist is missing."""
    if importlib.util.find_spec("xdist") is None:
        return 0
    if requested is not None:
        return requested
    return min(12, max((os.cpu_count() or 2) - 2, 0)) if cuda else 0


def stage_correctness(stage: Stage) -> None:
    args = stage.args
    env = child_env(gluon=False)
    workers = xdist_workers(args.workers, bool(stage.data["env"].get("cuda_available")))
    # Fewer hypothesis examples (tests/conftest.py's "gpu" profile): on a GPU each new
    # random shape compiles and autotunes every config.
    common = ["--hypothesis-profile=gpu", *(["-n", str(workers)] if workers else [])]
    if workers and importlib.util.find_spec("pytest_timeout") is not None:
        # A test that hangs (a kernel that never finishes) ends its worker after a stack
        # dump naming it; xdist reports the crash and starts another worker.
        common += [f"--timeout={TEST_TIMEOUT_S}", "--timeout-method=thread"]
    stage.data["xdist_workers"] = workers
    if args.dry_run:
        plan = [(label, sel, env) for label, sel in DRY_CORRECTNESS.items()]
    else:
        plan = [("gluon", GLUON_TESTS, env), ("core", CORE_TESTS, env),
                ("core_gluon", CORE_GLUON_TESTS, child_env(gluon=True)),
                ("rest", ["tests", *GPU_ONLY_ELSEWHERE, *_ignores(CORE_TESTS + GLUON_TESTS)],
                 env)]
    if args.runs:
        unknown = set(args.runs) - {label for label, _, _ in plan}
        if unknown:
            raise ValueError(f"--runs: no correctness run named {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(label for label, _, _ in plan)}")
        plan = [p for p in plan if p[0] in args.runs]
    budget = stage.remaining()
    for label, selection, run_env in plan:
        cap = CORRECTNESS_CAPS.get(label, 1.0) * budget
        limit = min(cap, stage.remaining() - 15)
        if limit < 30:
            stage.data["errors"].append(f"{label}: not run, the stage budget ran out")
            stage.say(f"=== {stage.name}/{label}: not run (budget)")
            continue
        stage.pytest(label, [*selection, *common, *args.pytest_args], run_env, limit)
        _write_correctness_md(stage)


def _ignores(paths: list[str]) -> list[str]:
    return [f"--ignore={p}" for p in paths]


def _bench_stage(stage: Stage, test_file: str, select: str, gluon: bool) -> None:
    args = stage.args
    records = stage.out / f"{stage.name}-records.jsonl"
    records.unlink(missing_ok=True)
    env = child_env(gluon)
    # Benchmarks that would start later than this are skipped (and say so), leaving time
    # for pytest to write its files before the stage's limit.
    env["DAWIN_BENCH_DEADLINE"] = str(stage.deadline - 60)
    env["DAWIN_BENCH_RECORDS"] = str(records)
    selection = [test_file, "--benchmark-enable",
                 f"--benchmark-json={stage.out / f'{stage.name}-benchmark.json'}"]
    if select:
        selection += ["-k", select]
    stage.pytest(stage.name, [*selection, *args.pytest_args], env, stage.remaining() - 10,
                 xml_name=f"{stage.name}.xml", verbose=True)
    if records.exists():
        stage.data["records"] = [json.loads(line) for line in
                                 records.read_text(encoding="utf-8").splitlines() if line]
    skipped_by_budget = [r for r in stage.data["records"]
                         if "DAWIN_BENCH_DEADLINE" in str(r.get("skipped", ""))]
    if skipped_by_budget:
        stage.data["errors"].append(f"{len(skipped_by_budget)} benchmarks not run: the stage "
                                    f"budget ran out (run them with --filter)")
    stage.save()
    _write_tables(stage)


def _write_tables(stage: Stage) -> None:
    from benchmarks import render

    try:
        text = render.render([str(stage.out / f"{stage.name}.json")])
    except Exception as error:  # noqa: BLE001 (recorded)
        text = f"render failed: {error!r}\n"
        stage.data["errors"].append(f"render: {error!r}")
    (stage.out / f"{stage.name}.md").write_text(text, encoding="utf-8")


def _select(base: str, dry: str, args: argparse.Namespace) -> str:
    parts = [dry if args.dry_run else base]
    if args.filter:
        parts.append(f"({args.filter})")
    return " and ".join(parts)


def stage_layers(stage: Stage) -> None:
    select = _select(LAYER_SELECT, f"{LAYER_SELECT} and {DRY_LAYER_CASE}", stage.args)
    _bench_stage(stage, "benchmarks/test_bench_interp_linear.py", select, stage.args.gluon)


def stage_compiled(stage: Stage) -> None:
    select = _select(COMPILED_SELECT, DRY_COMPILED_SELECT, stage.args)
    _bench_stage(stage, "benchmarks/test_bench_interp_linear.py", select, stage.args.gluon)


def stage_e2e(stage: Stage) -> None:
    _bench_stage(stage, "benchmarks/test_bench_dawin.py", "", stage.args.gluon)


def stage_backend(stage: Stage) -> None:
    args = stage.args
    argv = [sys.executable, "-m", "benchmarks.backend", "--device",
            "cpu" if args.dry_run else "cuda"]
    if args.dry_run:
        argv += ["--repeats", "1"]
    if args.dry_run or importlib.util.find_spec("fusion_bench") is None:
        argv += ["--only", "layer"]  # WEMoE needs fusion_bench (not on the GPU image)
    stage.run("backend", argv, child_env(args.gluon), stage.remaining() - 10)
    lines = stage.log_path.read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("=== backend/backend:"))
    table = [line for line in lines[first + 1:] if not line.startswith("=== ")]
    (stage.out / "backend.md").write_text(
        "# benchmarks/backend.py\n\n```\n" + "\n".join(table) + "\n```\n", encoding="utf-8")


def stage_render(stage: Stage) -> None:
    from benchmarks import render

    folders = [Path(f) for f in stage.args.sources] or [stage.out]
    files = [str(p) for folder in folders for name in ("layers", "compiled", "e2e")
             for p in sorted(folder.glob(f"**/{name}.json"))]
    if not files:
        raise FileNotFoundError(f"no layers.json, compiled.json or e2e.json under "
                                f"{', '.join(map(str, folders))}")
    output = Path(stage.args.output) if stage.args.output else stage.out / "RESULTS.md"
    text = render.render(files)
    output.write_text(text, encoding="utf-8")
    stage.data["commands"].append(f"python -m benchmarks.render {' '.join(files)}")
    stage.data["rendered"] = {"files": files, "output": str(output)}
    stage.say(f"wrote {output} from {len(files)} files")
    (stage.out / "render.md").write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------ plan

# Cost constants of the plan (seconds; assumptions, stated so they can be corrected once
# a GPU has run the stages): COMPILE_S is one Triton kernel variant (the compile gate's
# median on this 2-core CPU: 2.3-3.4 s per variant, kernels/compiled.json); AUTOTUNE_S one
# config benchmarked by triton.autotune (do_bench: 25 ms warm-up + 100 ms); MEASURE_S one
# (case, method) timing of time_cuda (first call, 5-call estimate, 25 ms warm-up, >= 20
# calls or 100 ms with 0.1 ms L2 flushes, pytest-benchmark's 12 synchronised rounds);
# CASE_S inputs drawn on the device and the float32 reference; STARTUP_S wheels, imports,
# collection; COMPILED_SHAPE_S one torch.compile(max-autotune) GEMM shape.
PLAN_COSTS = dict(COMPILE_S=2.5, AUTOTUNE_S=0.15, MEASURE_S=0.35, CASE_S=0.5, STARTUP_S=40.0,
                  COMPILED_SHAPE_S=40.0)


def plan_layers(cases, methods, gluon: bool) -> dict:
    """Work of a layer-benchmark run on an H100: measurements, Triton compile variants and
    autotune benchmarks (from the same dispatch and config rules the kernels use)."""
    import torch

    from dawin_fast.bench import layers as bench
    from dawin_fast.kernels import dispatch
    from dawin_fast.kernels.configs import fitting_configs
    from dawin_fast.kernels.interp_matmul import choose_strategy, gpu_combine_block_m

    target = dispatch.Target(cuda=True, half=True, gluon=gluon, hopper=True)
    compiles, autotune_keys, autotune_configs = set(), set(), 0
    measurements = compiled_shapes = 0
    for case in cases:
        groups = len(bench.group_lengths(case.pattern, case.images, case.tokens))
        n, k, m, rows = case.out_features, case.in_features, case.num_models, case.rows
        for method in methods:
            if method == "materialize_compiled":
                if groups > 8:
                    continue
                compiled_shapes += groups
            elif method == "einsum_grouped_mm" and groups == 1:
                continue
            measurements += 1
            if method == "fused":
                strategy = choose_strategy(rows, groups, m, case.dtype, False, True, n, k, target)
            elif method in bench.STRATEGY_METHODS:
                strategy = bench.STRATEGY_METHODS[method]
            else:
                continue
            # A forced "rowscaled" runs "epilogue" on Hopper (dispatch.ROWSCALED_HAZARD).
            strategy = dispatch.served_by(strategy, target, case.dtype, False)
            flags = (strategy, m, groups == 1, str(case.dtype))
            if strategy in dispatch.NEW_STRATEGIES:
                config = dispatch.best_config(strategy, rows, groups, m, n, k)
                kernel = "gluon" if strategy == "swapab" and gluon else strategy
                compiles.add((kernel, config, *flags[1:]))
                continue
            block_m = gpu_combine_block_m(rows, groups, case.dtype) \
                if strategy == "combine" else None
            configs = fitting_configs(strategy, m, case.dtype, False, block_m, True)
            key = (strategy, n, k, m, min(1 << max(rows - 1, 0).bit_length(), 1 << 16),
                   block_m, str(case.dtype))
            if key not in autotune_keys:
                autotune_keys.add(key)
                autotune_configs += len(configs)
            compiles.update((*flags, block_m, i) for i in range(len(configs)))
    costs = PLAN_COSTS
    seconds = (costs["STARTUP_S"] + len(cases) * costs["CASE_S"]
               + measurements * costs["MEASURE_S"] + len(compiles) * costs["COMPILE_S"]
               + autotune_configs * costs["AUTOTUNE_S"]
               + compiled_shapes * costs["COMPILED_SHAPE_S"])
    del torch
    return dict(cases=len(cases), measurements=measurements, compile_variants=len(compiles),
                autotune_keys=len(autotune_keys), autotuned_configs=autotune_configs,
                compiled_gemm_shapes=compiled_shapes, estimated_s=round(seconds))


def print_plan(args: argparse.Namespace) -> None:
    """The layer and compiled stages' work on an H100 and its estimated seconds."""
    from dawin_fast.bench import layers as bench

    cases = [c for c in bench.gpu_cases() if not args.filter or args.filter in c.id]
    layer_methods = [m for m in bench.METHODS if m != "materialize_compiled"]
    p1 = [c for c in cases if c.target == "P1"]
    print(f"plan (no GPU used; cost constants {PLAN_COSTS})")
    for label, plan in (
            ("layers", plan_layers(cases, layer_methods, args.gluon)),
            ("compiled", plan_layers(p1, ["materialize_compiled"], args.gluon))):
        print(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in plan.items()))


#: The self-check the first-contact stage runs first (its exit code and output are
#: recorded; a CLI without it fails there, recorded, and the stage goes on).
SELFCHECK = ["-m", "dawin_fast.app.cli", "selfcheck", "--device", "cuda", "--json"]
SELFCHECK_LIMIT_S = 60.0
RESTARTS = 6  # children per part at most (each restart follows a lost context)
CHILD_GRACE_S = 5.0


def stage_first_contact(stage: Stage) -> None:
    """Self-check, ceilings, numerics, Gluon, P1-P4, P5/P6 and RESULTS.md in one device
    call, each part children of ``benchmarks.first_contact`` (see its docstring), their
    records appended to ``first-contact-records.jsonl`` as they come."""
    from benchmarks import first_contact as fc

    args = stage.args
    records = stage.out / "first-contact-records.jsonl"
    records.unlink(missing_ok=True)
    env = child_env(args.gluon)
    cache = Path(args.triton_cache or "/tmp/dawin-first-contact-triton-cache")
    env["TRITON_CACHE_DIR"] = str(cache)
    toy = args.dry_run
    numerics_items = fc.items("numerics", toy, gluon=False)
    gluon_items = fc.items("numerics", toy, gluon=True)
    fake = fc._fake_spec() is not None
    if toy or fake:  # every case, the Gluon ones apart (none at toy sizes)
        gluon_idx = [i.index for i in gluon_items if i.gluon] if args.gluon else []
        core = [i.index for i in numerics_items if i.index not in gluon_idx]
        more, smoke = [], fc.smoke_indices(gluon_items) if gluon_idx else []
        planned = {part: 5.0 if fake else 30.0 for part in fc.PARTS}
    else:
        plan = fc.plan(stage.remaining(), args.gluon)
        stage.data["plan"] = {k: v for k, v in plan.items() if k != "calls"}
        core, more = plan["core_indices"], plan["left_indices"]
        gluon_idx, smoke = plan["gluon_indices"], plan["smoke_indices"]
        planned = {name: part["seconds_alone"] for name, part in plan["parts"].items()}
        planned["ceilings"] = fc.ceilings_seconds() + fc.COSTS["CHILD_S"]
        stage.data["predictions"] = fc.predictions()
    if args.triton_cache_from:
        stage.data["transplant"] = _transplant(stage, Path(args.triton_cache_from), cache)
    stage.data["triton_cache"] = _cache_report(cache)
    stage.data["excluded_kernels"] = {}
    # The library's default (Gluon opt-in): what a user's first call gets; a Gluon kernel
    # that hangs costs the Gluon child's deadline, not the self-check's minute.
    _selfcheck(stage, dict(env, DAWIN_FAST_GLUON="0"))
    selections = {"ceilings": None, "numerics": core, "gluon": gluon_idx, "layers": None,
                  "e2e": None, "numerics_more": more}
    gluon_flag = "0"
    for part in fc.PARTS:
        chosen = selections[part]
        if part in ("numerics_more", "gluon") and not chosen:
            if part == "gluon":
                _gluon_decision(stage, records, args.gluon, [], [])
            continue
        # Each part may use what the planned parts after it do not need (numerics_more
        # needs nothing: it only uses what is left); the ceilings get a minute at most.
        later = sum(planned.get(p, 0) for p in fc.PARTS[fc.PARTS.index(part) + 1:]
                    if p != "numerics_more")
        limit = stage.remaining() - later - 10
        if part == "ceilings":
            limit = min(limit, 60.0)
        if limit < 20:
            stage.data["errors"].append(f"{part}: not run, the stage budget ran out")
            stage.say(f"=== {stage.name}/{part}: not run (budget)")
            if part == "gluon":  # planned, never run: off
                _gluon_decision(stage, records, args.gluon, [gluon_items[i] for i in chosen],
                                [])
            continue
        part_env = dict(env)
        if toy and part in ("numerics", "numerics_more", "gluon"):
            part_env["TRITON_INTERPRET"] = "1"  # fp16 toy cases through the kernels
        if part in ("numerics", "numerics_more"):
            part_env["DAWIN_FAST_GLUON"] = "0"
        elif part == "gluon":
            part_env["DAWIN_FAST_GLUON"] = "1"
        elif part in ("layers", "e2e") and not toy:
            part_env["DAWIN_FAST_GLUON"] = gluon_flag
        gluon = part_env.get("DAWIN_FAST_GLUON") == "1"
        listed = fc.items(fc.PART_KIND[part], toy, gluon)
        todo = [listed[i] for i in chosen] if chosen is not None else listed
        runs = run_part(stage, part, todo, smoke if part == "gluon" else [], part_env,
                        limit, records, listed)
        if part == "gluon":
            gluon_flag = _gluon_decision(stage, records, args.gluon,
                                         todo + [dataclasses.replace(listed[i], kind="smoke")
                                                 for i in smoke], runs)
        stage.data["records"] = _read_records(records)
        stage.save()
        if part == "e2e":  # RESULTS.md before the optional part, in case the call is cut
            _render_first_contact(stage)
    _render_first_contact(stage)
    failing = sorted({r["case"] for r in stage.data["records"]
                      if r.get("kind") in ("numerics", "repeat", "smoke")
                      and r.get("passed") is False})
    if failing:
        stage.data["errors"].append(f"numerics: {len(failing)} cases failed: "
                                    f"{', '.join(failing[:20])}")


def _selfcheck(stage: Stage, env: dict[str, str]) -> None:
    """The library's self-check, first: its exit code, output tail and JSON report."""
    report = stage.out / "selfcheck.json"
    argv = [sys.executable, *SELFCHECK, str(report)]
    run = stage.run("selfcheck", argv, env, min(SELFCHECK_LIMIT_S, stage.remaining() / 4))
    lines = stage.log_path.read_text(encoding="utf-8").splitlines()
    marks = [i for i, line in enumerate(lines)
             if line.startswith(f"=== {stage.name}/selfcheck:")]
    output = lines[marks[0] + 1:marks[-1]] if len(marks) > 1 else []
    result = dict(returncode=run.get("returncode"), timed_out=run["timed_out"],
                  passed=run.get("returncode") == 0 and not run["timed_out"],
                  output_tail="\n".join(output[-20:]))
    if report.exists():
        try:
            result["report"] = json.loads(report.read_text(encoding="utf-8"))
        except ValueError as error:
            result["report_error"] = repr(error)
    stage.data["selfcheck"] = result
    if not result["passed"]:
        stage.data["errors"].append(f"selfcheck: exit {run.get('returncode')}"
                                    f"{' (timed out)' if run['timed_out'] else ''}: "
                                    f"{(output or [''])[-1][:200]}")
    stage.save()


def run_part(stage: Stage, part: str, todo: list, smoke: list[int], env: dict[str, str],
             limit: float, records: Path, listed: list) -> list[dict]:
    """One part's children: a child runs the items left; when one dies (a CUDA error, a
    hang, a kill past its limit) the item it had started gets its failure record, the
    items of that kernel are skipped (recorded) and a new child runs the rest. Returns
    the runs of its children."""
    from benchmarks import first_contact as fc

    deadline = time.time() + limit
    writer = fc.Records(records, part)
    excluded: dict[str, str] = stage.data.setdefault("excluded_kernels", {})
    smoke_items = [dataclasses.replace(listed[i], kind="smoke") for i in smoke]
    pending = [*smoke_items, *todo]
    runs: list[dict] = []
    for attempt in range(RESTARTS):
        pending = _drop_excluded(pending, excluded, writer)
        if not pending:
            break
        left = deadline - time.time()
        if left < 10:
            for item in pending:
                for rec in fc.failure_records(item, ""):
                    rec.pop("error")
                    writer.write(dict(rec, skipped="the part's time ran out before this case"))
            break
        argv = [sys.executable, "-m", "benchmarks.first_contact", part, "--records",
                str(records), "--items", ",".join(str(i.index) for i in pending
                                                  if i.kind != "smoke"),
                "--smoke", ",".join(str(i.index) for i in pending if i.kind == "smoke")]
        if stage.args.dry_run:
            argv.append("--toy")
        run_env = dict(env, DAWIN_BENCH_DEADLINE=str(deadline - 10))
        label = part if attempt == 0 else f"{part}-{attempt + 1}"
        # A child's records are on disk as they come: a child blocked in a hung kernel
        # (which SIGINT cannot wake) is killed after a few seconds, not GRACE_S.
        run = stage.run(label, argv, run_env, left, grace=CHILD_GRACE_S)
        runs.append(run)
        mine = [r for r in _read_records(records) if r.get("part") == part]
        started = {r["item"] for r in mine if r.get("kind") == "start"}
        finished = {r["item"] for r in mine if r.get("kind") == "done"}
        skipped = {r.get("item") for r in mine if r.get("skipped")}
        lost = [i for i in pending if i.key in started and i.key not in finished]
        pending = [i for i in pending if i.key not in started and i.key not in skipped]
        if run.get("returncode") == 0 and not run["timed_out"]:
            break
        why = {fc.CUDA_ERROR_EXIT: "CUDA error", fc.HANG_EXIT: "hang"}.get(
            run.get("returncode"), "timed out" if run["timed_out"]
            else f"exit {run.get('returncode')}")
        faults = {r["item"]: r.get("error", "") for r in mine if r.get("kind") == "fault"}
        if not lost:  # died outside any item (import, set-up): nothing to exclude
            stage.data["errors"].append(f"{part}: child died outside its items ({why})")
            if not started:
                break
            continue
        for item in lost:
            message = f"child died: {why}" + (f": {faults[item.key]}" if item.key in faults
                                              else "")
            for rec in fc.failure_records(item, message[:300]):
                writer.write(dict(rec, driver=True))
            excluded[item.kernel] = f"{why} in {item.case}"
            stage.say(f"=== {stage.name}/{part}: {item.case} ({item.kernel}): {why}; "
                      f"its kernel is excluded, {len(pending)} items left")
        stage.save()
    return runs


def _drop_excluded(pending: list, excluded: dict[str, str], writer) -> list:
    """The items whose kernel no failure excluded; the others get a record saying why."""
    from benchmarks import first_contact as fc

    keep = []
    for item in pending:
        if item.kernel in excluded:
            for rec in fc.failure_records(item, ""):
                rec.pop("error")
                writer.write(dict(rec, skipped=f"not run: kernel {item.kernel} excluded "
                                               f"after a {excluded[item.kernel]}"))
        else:
            keep.append(item)
    return keep


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _gluon_decision(stage: Stage, records: Path, wanted: bool, planned: list,
                    runs: list[dict]) -> str:
    """DAWIN_FAST_GLUON for the benchmark parts: on only if asked for, the Gluon child
    ran every smoke launch and Gluon case and each passed (a case that raised or died
    counts as failed, whatever its record holds), and its children exited cleanly in
    time (one child: no restart)."""
    mine = [r for r in _read_records(records) if r.get("part") == "gluon"
            and r.get("kind") in ("numerics", "repeat", "smoke")]
    passed: dict[str, bool] = {}
    for r in mine:
        key = f"{r.get('kind')}:{r.get('item')}"
        passed[key] = passed.get(key, True) and r.get("passed") is True
    failed = sorted({r["case"] for r in mine if r.get("passed") is not True})
    missing = []
    for item in planned:
        kinds = ("smoke",) if item.kind == "smoke" else ("numerics", "repeat")
        if not all(passed.get(f"{k}:{item.key}") for k in kinds):
            missing.append(item.case)
    clean = bool(runs) and len(runs) == 1 and runs[0].get("returncode") == 0 \
        and not runs[0]["timed_out"]
    ok = bool(planned) and clean and not failed and not missing
    flag = "1" if wanted and ok else "0"
    why = ("not asked for" if not wanted else "no Gluon case was run" if not planned
           else None if ok else "the Gluon child did not exit cleanly in time" if not clean
           else "Gluon cases failed or did not run")
    stage.data["gluon_decision"] = dict(flag=flag, asked=wanted, reason=why,
                                        failed_gluon_cases=failed,
                                        not_passed=sorted(set(missing)),
                                        children=len(runs))
    if wanted and flag == "0":
        stage.say(f"=== {stage.name}: Gluon off for the benchmarks ({why}; "
                  f"{len(set(missing))} of {len(planned)} items not passed)")
    return flag


def _transplant(stage: Stage, carried: Path, cache: Path) -> dict:
    """Re-key a Triton cache built elsewhere for this machine (benchmarks/triton_cache.py)."""
    from benchmarks import triton_cache

    begin = time.time()
    try:
        report = triton_cache.transplant(carried, cache)
    except Exception as error:  # noqa: BLE001 (recorded: the run goes on cold)
        report = dict(transplanted=0, reason=f"failed: {error!r}")
    report["seconds"] = round(time.time() - begin, 1)
    stage.say(f"=== {stage.name}: Triton cache from {carried}: {report['transplanted']} "
              f"entries transplanted ({report['reason']})")
    return report


def _cache_report(cache: Path) -> dict:
    """What Triton cache the children start from (entries before the run)."""
    entries = [p for p in cache.iterdir() if p.is_dir()] if cache.is_dir() else []
    return dict(dir=str(cache), entries_at_start=len(entries))


def _render_first_contact(stage: Stage) -> None:
    from benchmarks import render

    stage.save()
    try:
        text = render.render([str(stage.out / f"{stage.name}.json")])
        text += "\n" + "\n".join(first_contact_lines(stage.data)) + "\n"
    except Exception as error:  # noqa: BLE001 (recorded)
        stage.data["errors"].append(f"render: {error!r}")
        return
    (stage.out / "RESULTS.md").write_text(text, encoding="utf-8")
    (stage.out / f"{stage.name}.md").write_text(text, encoding="utf-8")
    stage.data["rendered"] = str(stage.out / "RESULTS.md")


def first_contact_lines(data: dict) -> list[str]:
    """The call's own facts under the rendered tables: the card it ran on, the self-check,
    the smoke launches and the Gluon decision, the kernels excluded after a failure, and
    the traffic model's predictions for both lent cards (the one it ran on marked)."""
    card = str(data.get("env", {}).get("device", "?"))
    lines = ["## This call", "", f"Card: **{card}**.", ""]
    check = data.get("selfcheck")
    if check:
        lines.append(f"Self-check (`python {' '.join(SELFCHECK)} $OUT/selfcheck.json`): "
                     f"{'passed' if check['passed'] else 'FAILED'}, exit "
                     f"{check['returncode']}{' (timed out)' if check['timed_out'] else ''}.")
    for r in data.get("records", []):
        if r.get("kind") == "smoke":
            lines.append(f"Smoke launch {r['case']} ({r.get('kernel', '?')}): "
                         f"{'pass' if r.get('passed') else 'FAIL'}"
                         f"{': ' + r['error'] if r.get('error') else ''}.")
    decision = data.get("gluon_decision")
    if decision:
        lines.append(f"DAWIN_FAST_GLUON for the benchmarks: {decision['flag']}"
                     f"{' (' + decision['reason'] + ')' if decision.get('reason') else ''}.")
    for kernel, why in data.get("excluded_kernels", {}).items():
        lines.append(f"Excluded after a failure: {kernel} ({why}).")
    predictions = data.get("predictions")
    if predictions:
        lines += ["", "Predictions (traffic model, written before the run): best fused "
                  "design / cuBLAS per P1-P4 case.", "",
                  "| card | copy TB/s | GEMM TFLOP/s | case | target | cuBLAS ms | swap-AB / "
                  "cuBLAS | epilogue / cuBLAS |", "|---|---|---|---|---|---|---|---|"]
        for name, p in predictions.items():
            here = " (this card)" if name.split()[0] in card else ""
            for row in p["layers"]:
                lines.append(f"| {name}{here} | {p['copy_tb_per_s']:.2f} | "
                             f"{p['gemm_tflop_per_s']:.0f} | {row['case']} | {row['target']} "
                             f"| {row['cublas_ms']:.3f} | {row.get('swapab_vs_cublas')} | "
                             f"{row.get('epilogue_vs_cublas')} |")
    return lines


RUNNERS = {"correctness": stage_correctness, "layers": stage_layers,
           "compiled": stage_compiled, "e2e": stage_e2e, "backend": stage_backend,
           "render": stage_render, "first-contact": stage_first_contact}


def run_stage(name: str, args: argparse.Namespace, budget_s: float) -> int:
    stage = Stage(name, Path(args.out), budget_s, args)
    try:
        stage.data["env"] = ({"date": now()} if name == "render"
                             else environment(child_env(args.gluon)))
        env = stage.data["env"]
        where = (f" on {env.get('device')}; torch {env.get('torch')}, triton "
                 f"{env.get('triton')}" if "device" in env else "")
        stage.say(f"=== stage {name} ({'dry run, ' if args.dry_run else ''}budget "
                  f"{budget_s:.0f} s){where}; {env['date']}")
        if stage.data["env"].get("nvidia_smi"):
            stage.say(stage.data["env"]["nvidia_smi"])
        stage.save()
        RUNNERS[name](stage)
    except BaseException as error:  # noqa: BLE001 (recorded, then the stage fails)
        stage.data["errors"].append("".join(traceback.format_exception(error)))
        stage.say(f"=== stage {name} crashed: {error!r}")
        code = stage.finish("crashed")
        if isinstance(error, KeyboardInterrupt):
            raise
        return code
    code = stage.finish()
    _print_summary(stage)
    return code


def _print_summary(stage: Stage) -> None:
    """The stage's runs in a few lines: the end of the device call's output."""
    lines = [f"--- {stage.name}: {stage.data['status']}"]
    for r in stage.data["runs"]:
        counts = ", ".join(f"{r[k]} {k}" for k in ("passed", "failures", "errors", "skipped")
                           if k in r)
        lines.append(f"  {r['label']}: exit {r.get('returncode')} in {r.get('seconds')} s"
                     f"{' TIMED OUT' if r.get('timed_out') else ''}; {counts}")
        for failed in r.get("failed_tests", [])[:15]:
            lines.append(f"    FAILED {failed}")
    for error in stage.data["errors"]:
        lines.append(f"  error: {error.strip().splitlines()[-1][:300]}")
    timed = [r for r in stage.data["records"] if r.get("median_ms") is not None]
    if stage.data["records"]:
        lines.append(f"  records: {len(stage.data['records'])} ({len(timed)} timed)")
    print("\n".join(lines), flush=True)


def _write_correctness_md(stage: Stage) -> None:
    env = stage.data.get("env", {})
    lines = [f"# correctness on {env.get('device')}", "",
             f"torch {env.get('torch')}, triton {env.get('triton')}, {env.get('date')}, "
             f"commit {env.get('commit')}", "",
             "| run | command | exit | seconds | passed | failed | errors | skipped |",
             "|---|---|---|---|---|---|---|---|"]
    for r in stage.data["runs"]:
        lines.append(f"| {r['label']} | `{r['command']}` | {r.get('returncode')}"
                     f"{' (timed out)' if r.get('timed_out') else ''} | {r.get('seconds')} | "
                     f"{r.get('passed', '?')} | {r.get('failures', '?')} | "
                     f"{r.get('errors', '?')} | {r.get('skipped', '?')} |")
    failed = [f for r in stage.data["runs"] for f in r.get("failed_tests", [])]
    if failed:
        lines += ["", "Failed:", *(f"- {f}" for f in failed)]
    if stage.data["errors"]:
        lines += ["", "Stage errors:", *(f"- {e.strip().splitlines()[-1]}"
                                         for e in stage.data["errors"])]
    (stage.out / "correctness.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="+", choices=(*STAGES, "dry-run", "plan"),
                        metavar="STAGE", help=f"one or more of {', '.join(STAGES)}; or "
                                              f"dry-run; or plan (print the work, run nothing)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_out"),
                        help="folder for every file (default: $OUT, else ./gpu_out)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for each stage (default {DEFAULT_BUDGET_S:.0f}, "
                             f"first-contact {FIRST_CONTACT_BUDGET_S:.0f}; with several "
                             f"stages in one call, each gets this)")
    parser.add_argument("--triton-cache", help="first-contact: TRITON_CACHE_DIR of its "
                                               "children (default a fresh /tmp folder)")
    parser.add_argument("--triton-cache-from", help="first-contact: a cache built by "
                        "`python -m benchmarks.triton_cache build` to re-key into it first")
    parser.add_argument("--gluon", choices=("on", "off"), default="on",
                        help="DAWIN_FAST_GLUON for the benchmark stages (default on; use off "
                             "if the correctness stage's gluon run failed)")
    parser.add_argument("--filter", help="layers, compiled: a pytest -k expression added to "
                                         "the case selection (e.g. 'ViT-B-32 and fc1')")
    parser.add_argument("--from", dest="sources", action="append", default=[],
                        help="render: a folder with stage files (repeatable; default --out)")
    parser.add_argument("--output", help="render: where to write (default OUT/RESULTS.md)")
    parser.add_argument("--pack", action="store_true",
                        help="fold each stage's files but its .md and .json into "
                             "<stage>.tar.gz (for several stages in one device call)")
    parser.add_argument("--dry-run", action="store_true",
                        help="toy sizes and small test selections (CPU check of the driver)")
    parser.add_argument("--workers", type=int, default=None,
                        help="correctness: pytest-xdist workers (default: min(12, CPUs - 2) "
                             "on a GPU machine with xdist, else 0)")
    parser.add_argument("--runs", help="correctness: only these runs, comma-separated (gluon, "
                                       "core, core_gluon, rest), e.g. to finish one a "
                                       "previous call cut short")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments (one string)")
    args = parser.parse_args(argv)
    args.runs = [r for r in (args.runs or "").split(",") if r]
    args.gluon = args.gluon == "on"
    args.pytest_args = shlex.split(args.pytest_args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stages = list(args.stages)
    if stages == ["plan", "first-contact"]:
        from benchmarks import first_contact

        first_contact.print_plan(args.budget or FIRST_CONTACT_BUDGET_S, args.gluon)
        return 0
    if stages == ["plan"]:
        print_plan(args)
        return 0
    if "dry-run" in stages:
        args.dry_run = True
        stages = ["first-contact"] if "first-contact" in stages else list(DRY_RUN_STAGES)
    worst = 0
    for name in stages:
        budget = args.budget or (FIRST_CONTACT_BUDGET_S if name == "first-contact"
                                 else DEFAULT_BUDGET_S)
        worst = max(worst, run_stage(name, args, budget))
        if args.pack:
            pack(Path(args.out), name)
    return worst


def pack(out: Path, stage: str) -> None:
    """Fold a stage's files into ``<stage>.tar.gz`` beside its ``.md`` and ``.json``: the
    device tool returns at most 8 files, so a call running several stages packs each."""
    import tarfile

    files = [out / f for f in stage_file_names(out, stage)
             if f not in (f"{stage}.md", f"{stage}.json", f"{stage}.tar.gz")]
    if not files:
        return
    with tarfile.open(out / f"{stage}.tar.gz", "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.name)
    for path in files:
        path.unlink()


def stage_file_names(out: Path, stage: str) -> list[str]:
    return sorted(p.name for p in out.iterdir()
                  if p.is_file() and p.name.startswith((f"{stage}.", f"{stage}-")))


if __name__ == "__main__":
    sys.exit(main())
