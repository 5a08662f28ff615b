"""Render a pytest-benchmark JSON file as the markdown tables of RESULTS.md.

    python -m benchmarks.render benchmarks/results.json "<the command that produced it>"
"""

from __future__ import annotations

import json
import sys

from dawin_fast.bench.layers import render_markdown


def records(data: dict) -> list[dict]:
    out = []
    for bench in data["benchmarks"]:
        extra = bench["extra_info"]
        ms = extra["median_ms"] if "median_ms" in extra else bench["stats"]["median"] * 1e3
        out.append(dict(case=extra["case"], method=extra["method"], median_ms=ms))
    return out


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m benchmarks.render RESULTS.json [COMMAND]")
    with open(argv[0], encoding="utf-8") as f:
        data = json.load(f)
    info = data["machine_info"]
    header = [f"Device: {info.get('device', '?')}; torch {info.get('torch', '?')}, "
              f"triton {info.get('triton', '?')}; {data['datetime'][:10]}",
              f"Command: `{argv[1] if len(argv) > 1 else '(not recorded)'}`"]
    print(render_markdown(records(data), header))


if __name__ == "__main__":
    main(sys.argv[1:])
