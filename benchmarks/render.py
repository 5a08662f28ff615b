"""Render a pytest-benchmark JSON file as the markdown tables of RESULTS.md.

    python -m benchmarks.render benchmarks/results.json "<the command that produced it>"

One table per case; each method's median time and its ratio to ``premerged_cublas`` (the
floor: one GEMM on a weight merged beforehand) and to ``fused``.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def median_ms(bench: dict) -> float:
    extra = bench["extra_info"]
    return extra["median_ms"] if "median_ms" in extra else bench["stats"]["median"] * 1e3


def render(data: dict, command: str) -> str:
    info = data["machine_info"]
    lines = [
        f"Device: {info.get('device', '?')}; torch {info.get('torch', '?')}, "
        f"triton {info.get('triton', '?')}; {data['datetime'][:10]}",
        f"Command: `{command}`",
        "",
    ]
    by_case: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        extra = bench["extra_info"]
        by_case[extra["case"]][extra["method"]] = median_ms(bench)
    for case, times in by_case.items():
        floor, fused = times.get("premerged_cublas"), times.get("fused")
        lines += [f"### {case}", "", "| method | median ms | × premerged_cublas | × fused |",
                  "|---|---|---|---|"]
        for method, ms in sorted(times.items(), key=lambda kv: kv[1]):
            vs_floor = f"{ms / floor:.2f}" if floor else "–"
            vs_fused = f"{ms / fused:.2f}" if fused else "–"
            lines.append(f"| {method} | {ms:.4f} | {vs_floor} | {vs_fused} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) < 1:
        raise SystemExit("usage: python -m benchmarks.render RESULTS.json [COMMAND]")
    with open(argv[0], encoding="utf-8") as f:
        data = json.load(f)
    command = argv[1] if len(argv) > 1 else "(not recorded)"
    print(render(data, command))


if __name__ == "__main__":
    main(sys.argv[1:])
