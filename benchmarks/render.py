"""Render benchmark results as benchmarks/RESULTS.md: environment, P1-P6, every case.

    python -m benchmarks.render FILE [FILE ...] [--command CMD ...] [--output RESULTS.md]

Each FILE is one of:

* a stage file of ``benchmarks/gpu_session.py`` (``layers.json``, ``compiled.json``,
  ``e2e.json``: records, environment and the exact commands);
* a pytest-benchmark JSON (``--benchmark-json``) of ``benchmarks/test_bench_*.py``;
* a JSON-lines file of records (``DAWIN_BENCH_RECORDS``, see ``benchmarks/conftest.py``).

Layer and end-to-end records may come from several files (the same device): a record with
a time replaces one without, and a later file's replaces an earlier one's. The P1-P6 table
is computed from the records (``dawin_fast.bench.targets``), never written by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dawin_fast.bench import e2e as bench_e2e
from dawin_fast.bench import layers as bench_layers
from dawin_fast.bench import targets


def load(path: str | Path) -> tuple[list[dict], dict, list[str]]:
    """(records, environment, commands) of one file."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()], {}, []
    data = json.loads(text)
    if "records" in data:  # a gpu_session stage file: its driver command, then its runs
        commands = [data["driver"]] if data.get("driver") else []
        return data["records"], data.get("env", {}), commands + list(data.get("commands", []))
    if "benchmarks" in data:  # pytest-benchmark
        out = []
        for bench in data["benchmarks"]:
            record = dict(bench.get("extra_info", {}))
            if record.get("median_ms") is None and "stats" in bench:
                record["median_ms"] = bench["stats"]["median"] * 1e3
                record["timing"] = "pytest-benchmark wall clock"
            out.append(record)
        info = data.get("machine_info", {})
        env = dict(device=info.get("device"), torch=info.get("torch"),
                   triton=info.get("triton"), date=data.get("datetime", "")[:10])
        return out, env, []
    raise ValueError(f"{path}: neither a gpu_session stage file, a pytest-benchmark JSON nor "
                     f"JSON lines")


def merge(records: list[dict]) -> list[dict]:
    """One record per (case, method): a timed one beats an untimed one, later beats earlier."""
    kept: dict[tuple[str, str], dict] = {}
    for r in records:
        key = (r.get("case"), r.get("method"))
        old = kept.get(key)
        timed = (lambda rec: rec.get("median_ms") is not None)
        if old is None or timed(r) or not timed(old):
            kept[key] = r
    return list(kept.values())


def split(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Layer and end-to-end timing records (not the first-contact stage's ``kind``-tagged
    ceiling, numerics, repeat and cache records)."""
    timing = [r for r in records if not r.get("kind")]
    layer = [r for r in timing if r.get("method") in bench_layers.METHODS]
    e2e = [r for r in timing if r.get("method") in bench_e2e.METHODS]
    return layer, e2e


def render_checks(records: list[dict]) -> list[str]:
    """The first-contact stage's ceilings, numerics (error against the element-wise bound
    of ``dawin_fast.bench.numerics``) and 10-launch repeatability, and Triton cache hits."""
    lines: list[str] = []
    ceilings = [r for r in records if r.get("kind") == "ceiling"]
    if ceilings:
        lines += ["## Ceilings", "", "| what | median ms | rate | note |", "|---|---|---|---|"]
        for r in ceilings:
            rate = (f"{r['gb_per_s']:.0f} GB/s" if "gb_per_s" in r
                    else f"{r.get('tflop_per_s', 0):.0f} TFLOP/s")
            lines.append(f"| {r['case']} | {r.get('median_ms', 0):.3f} | {rate} | "
                         f"{r.get('note', '')} |")
        lines.append("")
    checks = {}
    for r in records:
        if r.get("kind") in ("numerics", "repeat"):
            checks.setdefault(r["case"], {})[r["kind"]] = r
    if checks:
        bad = [c for c, k in checks.items() if not all(r.get("passed") for r in k.values())]
        lines += ["## Numerics at production shapes", "",
                  f"{len(checks)} cases, {len(bad)} failing. Bound per element: u |ref| + 6 u s "
                  "(dawin_fast/bench/numerics.py); pass: worst |err| / bound <= 1, all finite; "
                  "repeat: 10 launches bitwise identical.", "",
                  "| case | kernel | worst err / bound | over bound | rel. error | repeat "
                  "(differing elements) | status |", "|---|---|---|---|---|---|---|"]
        for case, kinds in checks.items():
            num, rep = kinds.get("numerics", {}), kinds.get("repeat", {})
            worst = num.get("max_err_over_bound")
            status = "**FAIL**" if case in bad else "pass"
            error = num.get("error") or rep.get("error")
            if error:
                status += f": {error}"
            lines.append(
                f"| {case} | {num.get('kernel') or rep.get('kernel') or '–'} | "
                f"{'–' if worst is None else f'{worst:.3g}'} | "
                f"{num.get('elements_over_bound', '–')} | "
                f"{'–' if num.get('rel_err') is None else format(num['rel_err'], '.1e')} | "
                f"{max(rep.get('differing_elements') or ['–'])} | "
                f"{status} |")
        lines.append("")
    skipped = [r for r in records
               if r.get("kind") in ("numerics", "repeat") and r.get("skipped")]
    if skipped:
        lines += [f"Not run (budget): {len(skipped)} numerics records.", ""]
    caches = [r for r in records if r.get("kind") == "cache"]
    if caches:
        lines += ["Triton disk cache per part: " + "; ".join(
            f"{r.get('part')}: {r.get('hits')} hits, {r.get('misses')} misses" for r in caches),
            ""]
    return lines


def header_lines(envs: list[dict], commands: list[str]) -> list[str]:
    seen, lines = set(), []
    for env in envs:
        line = (f"Device: {env.get('device', '?')}; torch {env.get('torch', '?')}, triton "
                f"{env.get('triton', '?')}; {str(env.get('date', '?'))[:10]}")
        if env.get("commit"):
            line += f"; commit {env['commit']}"
        if env.get("gluon") is not None:
            line += f"; DAWIN_FAST_GLUON={env['gluon']}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    if any("cpu" in (env.get("device") or "").lower() for env in envs):
        lines.append("**CPU run (toy sizes): these times test the harness and mean nothing.**")
    if commands:
        lines += ["", "Commands:", *(f"- `{c}`" for c in dict.fromkeys(commands))]
    else:
        lines += ["", "Commands: (not recorded)"]
    return lines


def render(paths: list[str], commands: list[str] | None = None) -> str:
    records, envs, all_commands = [], [], []
    for path in paths:
        recs, env, cmds = load(path)
        records += recs
        if env:
            envs.append(env)
        all_commands += cmds
    all_commands += list(commands or [])
    checks = [r for r in records if r.get("kind")]
    layer, e2e = split(merge([r for r in records if not r.get("kind")]))
    lines = ["# Benchmark results", "",
             f"Generated by `python -m benchmarks.render {' '.join(map(str, paths))}` from "
             f"the benchmark records; every number below was measured by the commands listed.",
             "", *header_lines(envs, all_commands), "",
             "## Targets (P1-P6, docs/design.md)", "",
             targets.render_summary(targets.evaluate(layer, e2e)), ""]
    if layer:
        lines += ["## Layer benchmarks", "",
                  "Each case: the method's median time, its ratio to cuBLAS on the pre-merged "
                  "weight (premerged) and to the fused op, what the fused methods launched, "
                  "and the relative error against the float32 reference.", "",
                  bench_layers.render_markdown(layer, [])]
    if e2e:
        lines += ["## End to end (P5, P6)", "", bench_e2e.render_markdown(e2e, [])]
    lines += ["", *render_checks(checks)]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--command", action="append", default=[],
                        help="a command that produced the files (repeatable)")
    parser.add_argument("--output", metavar="MD", help="write here instead of printing")
    args = parser.parse_args(argv)
    text = render(args.files, args.command)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
