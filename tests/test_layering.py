"""The package's floors import only downward (the rule each folder's docstring states).

Reads every module's imports with ``ast`` (function-local imports included), resolves
relative imports, and checks each against the allowed floors of its own floor. A module
that adds an upward import (say ``algorithm`` importing ``nn``) fails here, naming the
file, the line and the rule.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# floor -> floors it may import (besides itself). "kernels" is the installed
# dawin_fast.kernels (source folder kernels/). "third:triton" marks the floors that may
# import Triton: dawin_fast knows nothing of Triton beyond the ops it calls.
ALLOWED = {
    "kernels": {"third:triton"},
    # kernel_tools: the developer tools of the kernels (compile gate, SASS check, the
    # traffic model's reports). Nothing imports it (no floor lists it).
    "kernel_tools": {"kernels", "third:triton"},
    # _launch: the command's Ctrl-C handler during imports; runs before everything else.
    "_launch": set(),
    "reference": set(),
    # measured: the measured dispatch's timing and cache (names and callables, no kernels).
    "measured": set(),
    # ops: the custom op, its autograd, dispatch glue and reports, over three modules of
    # its own: op_checks (input checks), torch_path (the PyTorch path and its cost model),
    # coeff_grads (coefficient gradients).
    "op_checks": set(),
    "torch_path": {"measured", "op_checks"},
    "coeff_grads": {"op_checks", "torch_path"},
    # verify: the verifier of kernels on the user's device (the element-wise bound of
    # reference, the measured dispatch's cache location and versions; kernels only to
    # list and launch them for the self-check).
    "verify": {"kernels", "measured", "reference"},
    "ops": {"kernels", "measured", "op_checks", "torch_path", "coeff_grads", "verify"},
    "algorithm": set(),
    "nn": {"ops", "algorithm"},
    # distributed: a thin layer over torch.distributed that knows nothing of DaWin; below
    # pipeline, so that DaWin.calibrate itself is correct under a process group.
    "distributed": set(),
    "pipeline": {"ops", "algorithm", "nn", "distributed"},
    # pipeline_lm: DaWin on causal LMs, built on pipeline's mode handling.
    "pipeline_lm": {"ops", "algorithm", "nn", "distributed", "pipeline"},
    "integrations": {"ops", "algorithm", "nn", "pipeline", "pipeline_lm", "distributed"},
    # bench times GPU work with triton.testing.do_bench (CUDA events, L2 flush): a timer,
    # not kernel internals.
    "bench": {"ops", "reference", "algorithm", "nn", "pipeline", "third:triton"},
    "app": {"ops", "reference", "verify", "algorithm", "nn", "pipeline", "pipeline_lm",
            "distributed", "bench", "integrations", "_launch"},
    # The package root re-exports the public API (never the application).
    "root": {"ops", "reference", "algorithm", "nn", "pipeline", "pipeline_lm", "distributed",
             "integrations", "_launch"},
    "main": {"app"},  # dawin_fast/__main__.py: `python -m dawin_fast`
}
# Folders allowed to print or open files: the application, and the kernels' developer
# tools (the compile gate compiles in worker processes, reports, writes
# kernels/compiled.{json,md}).
IO_FLOORS = {"app", "kernel_tools"}
# Single modules outside them that may, and why.
IO_MODULES = {
    "dawin_fast.measured": "the measured dispatch's cache: one JSON file per device and "
                           "versions, like Triton's autotune cache",
    "dawin_fast.verify": "the verifier's verdicts and in-flight markers, beside the measured "
                         "dispatch's cache",
}


def module_name(path: Path) -> str:
    """Dotted name of a source file as installed (kernels/ is dawin_fast.kernels)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["dawin_fast", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def floor_of(module: str) -> str | None:
    """The floor of a dawin_fast module name, None for third-party modules."""
    parts = module.split(".")
    if parts[0] != "dawin_fast":
        return "third:triton" if parts[0] == "triton" else None
    if len(parts) == 1:
        return "root"
    return {"__main__": "main"}.get(parts[1], parts[1])


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or target in ("dawin_fast",):
                # `from . import x` / `from dawin_fast import x`: x may be a submodule.
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return found


def violations(path: Path) -> list[str]:
    own = floor_of(module_name(path))
    allowed = ALLOWED[own] | {own}
    out = []
    for line, target in imports_of(path):
        floor = floor_of(target)
        if floor is not None and floor not in allowed:
            out.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {target} ({floor})")
    return out


def prints_or_opens(path: Path) -> list[str]:
    """Calls of print() or open() outside the application floor."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.id}()"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("print", "open")]


SOURCES = sorted([*ROOT.glob("dawin_fast/**/*.py"), *ROOT.glob("kernels/**/*.py")])


def test_sources_found():
    names = {module_name(p) for p in SOURCES}
    assert {"dawin_fast.ops", "dawin_fast.kernels.interp_matmul", "dawin_fast.nn.linear",
            "dawin_fast.algorithm.mixture", "dawin_fast.app.cli",
            "dawin_fast.kernel_tools.compile_gate"} <= names


def test_kernels_hold_no_tools():
    """kernels/ holds kernels, their configs and launchers: the compile gate,
    the SASS check and the traffic model's reports live in dawin_fast/kernel_tools/."""
    present = {p.name for p in (ROOT / "kernels").glob("*.py")}
    assert not present & {"compile_gate.py", "sass_hazard.py", "traffic_model.py"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    assert floor_of(module_name(path)) in ALLOWED, f"{path}: unknown floor, add it to ALLOWED"
    assert not violations(path)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_application_does_io(path):
    if floor_of(module_name(path)) in IO_FLOORS or module_name(path) in IO_MODULES:
        return
    assert not prints_or_opens(path)


def test_checker_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule can fail: an algorithm module importing nn, the kernels importing
    dawin_fast, or nn importing Triton, is reported."""
    fake_root = tmp_path
    (fake_root / "dawin_fast" / "algorithm").mkdir(parents=True)
    (fake_root / "dawin_fast" / "nn").mkdir(parents=True)
    (fake_root / "kernels").mkdir()
    bad = {
        "dawin_fast/algorithm/bad.py": "from ..nn.linear import DaWinLinear\n",
        "dawin_fast/nn/bad.py": "def f():\n    import triton\n",
        "kernels/bad.py": "from dawin_fast.ops import interp_linear\n",
        # the launchers never depend on the tools that check them
        "kernels/bad_tool.py": "from dawin_fast.kernel_tools import compile_gate\n",
        "dawin_fast/nn/bad_tool.py": "from ..kernel_tools import traffic_model\n",
    }
    for rel, text in bad.items():
        (fake_root / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    for rel in bad:
        assert violations(fake_root / rel), rel
    good = fake_root / "dawin_fast" / "nn" / "good.py"
    good.write_text("from ..ops import interp_linear\nfrom ..algorithm import grouping\n")
    assert not violations(good)
