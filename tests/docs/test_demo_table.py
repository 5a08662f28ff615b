"""The demo table of docs/getting-started.md against a run: ``.ci/run`` runs
``dawin-fast demo --output`` before the tests and names its report in DAWIN_DEMO_REPORT;
every accuracy of the docs must be the one that run printed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"
REPORT_ENV = "DAWIN_DEMO_REPORT"
ROW = re.compile(r"^(?P<method>\S.*?)\s{2,}(?P<ind>\d+\.\d\d)%\s+(?P<shifted>\d+\.\d\d)%\s+\S+$")


def docs_table() -> dict[str, tuple[str, str]]:
    """method (as the report names it) -> (in-distribution, shifted) accuracy strings."""
    section = DOC.read_text().split("## The demo", 1)[1]
    block = section.split("```text", 1)[1].split("```", 1)[0]
    rows = {}
    for line in block.splitlines():
        match = ROW.match(line)
        if match:
            method = re.sub(r"^(model \d) \(.*\)$", r"\1", match["method"])
            rows[method] = (match["ind"], match["shifted"])
    return rows


def test_the_docs_show_the_demo_table():
    assert list(docs_table()) == ["model 0", "model 1", "WiSE-FT (λ=0.5)", "output ensemble",
                                  "classifier selection", "DaWin per-sample", "DaWin mixture"]


def test_the_docs_demo_accuracies_are_those_of_the_ci_run():
    path = os.environ.get(REPORT_ENV)
    if not path:
        pytest.skip(f"{REPORT_ENV} names the report of `dawin-fast demo --output`; .ci/run "
                    f"sets it")
    report = json.loads(Path(path).read_text())
    assert report["config"]["seed"] == 0 and report["config"]["epochs"] == [40, 25]
    sets = report["sets"]
    ran = {method: tuple(f"{100 * sets[s][method]['accuracy']:.2f}"
                         for s in ("in-distribution", "shifted"))
           for method in docs_table()}
    assert docs_table() == ran, f"docs/getting-started.md's demo table is not the run {path}"
