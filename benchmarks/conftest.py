"""Benchmark session hooks: the software and device next to every result, a time budget,
and a record of every benchmark as soon as it finishes.

* ``DAWIN_BENCH_DEADLINE`` (Unix time in seconds): benchmarks that would start after it
  are skipped with that reason, so a run that must end within a device call's limit
  writes its results instead of being killed (``benchmarks/gpu_session.py`` sets it).
* ``DAWIN_BENCH_RECORDS`` (a path): one JSON line per benchmark test as it finishes (its
  ``extra_info``, the outcome, and the error or skip reason), so a run cut short still
  leaves every finished record, failures included.

A benchmark whose ``extra_info`` holds a ``noise`` note (``dawin_fast.bench.paired``: a
wide spread between rounds, or a load average above the core count) is listed with it at
the end of the run.
"""

from __future__ import annotations

import json
import os
import time

import pytest

DEADLINE_ENV = "DAWIN_BENCH_DEADLINE"
RECORDS_ENV = "DAWIN_BENCH_RECORDS"
# As in tests/conftest.py: the model's dispatch (deterministic, no cache written in the home
# directory) unless a run sets DAWIN_FAST_MEASURE itself.
os.environ.setdefault("DAWIN_FAST_MEASURE", "0")


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch
    import triton

    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                              else "cpu (no GPU: toy sizes, PyTorch path)")
    machine_info["gluon"] = os.environ.get("DAWIN_FAST_GLUON", "0")


def pytest_runtest_setup(item):
    deadline = os.environ.get(DEADLINE_ENV)
    if deadline and time.time() > float(deadline):
        pytest.skip(f"the stage's time budget ran out before this benchmark ({DEADLINE_ENV})")


def _params(item) -> dict:
    """The case parameters and method of a parametrized benchmark test."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    out = {}
    case = params.get("case")
    if hasattr(case, "info"):
        out.update(case.info())
    if "method" in params:
        out["method"] = params["method"]
    return out


_NOISY: list[tuple[str, str]] = []  # (test id, note) of the benchmarks run so far


def pytest_terminal_summary(terminalreporter):
    if _NOISY:
        terminalreporter.section("noisy benchmarks")
        for test, note in _NOISY:
            terminalreporter.write_line(f"{test}: {note}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    benchmark = item.funcargs.get("benchmark") if hasattr(item, "funcargs") else None
    if report.when == "call" and benchmark is not None and benchmark.extra_info.get("noise"):
        _NOISY.append((item.nodeid, benchmark.extra_info["noise"]))
    path = os.environ.get(RECORDS_ENV)
    if not path or not (report.when == "call" or report.outcome != "passed"):
        return  # one line per test: its call, or the phase that failed or skipped it
    record = {**_params(item), **(dict(benchmark.extra_info) if benchmark else {}),
              "test": item.nodeid, "outcome": report.outcome, "phase": report.when}
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        record["skipped"] = reason.removeprefix("Skipped: ")
    elif report.failed:
        lines = str(report.longrepr).strip().splitlines()
        errors = [line for line in lines if line.startswith("E ")]
        record["error"] = (errors[0][1:].strip() if errors else lines[-1])[:300]
    record.setdefault("median_ms", None)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
