"""The ```python blocks of the documentation (docs/*.md, README.md) and how one runs.

Convention (docs/development.md, "Examples run as tests"): every ```python block runs. An
HTML comment on the line right before a block, ``<!-- example: FLAGS -->``, may say
``setup=NAME`` (a function of ``setups.SETUPS`` defines the names the block leaves to the
reader), ``gpu`` (needs CUDA: skipped without it) and ``grad`` (autograd on).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from dawin_fast import use_backend
from tests.docs.setups import SETUPS

ROOT = Path(__file__).resolve().parents[2]
FLAGS = {"gpu", "grad"}
MARKER = re.compile(r"^<!--\s*example:(.*?)-->\s*$")  # alone on its line
FENCE = re.compile(r"^(\s*)```(\S*)")


@dataclass(frozen=True)
class Example:
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    code: str
    setup: str | None = None
    gpu: bool = False
    grad: bool = False

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}"


def parse(text: str, path: str) -> tuple[list[Example], list[str]]:
    """Every python block of one markdown text, and the convention's violations found."""
    lines = text.splitlines()
    examples: list[Example] = []
    problems: list[str] = []
    pending: tuple[int, str] | None = None  # a marker waiting for its block
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        fence = FENCE.match(line)
        if marker:
            if pending:
                problems.append(f"{path}:{pending[0]}: marker not followed by a python block")
            pending = (i + 1, marker.group(1))
            i += 1
            continue
        if not fence:
            if pending and line.strip():
                problems.append(f"{path}:{pending[0]}: marker not followed by a python block")
                pending = None
            i += 1
            continue
        indent, lang = fence.groups()
        end = next((j for j in range(i + 1, len(lines))
                    if lines[j].strip().startswith("```")), None)
        if end is None:
            problems.append(f"{path}:{i + 1}: unclosed code fence")
            break
        if lang.startswith("py") and lang != "python":
            problems.append(f"{path}:{i + 1}: ```{lang} block (not run): tag it python")
        if lang == "python":
            if indent:
                problems.append(f"{path}:{i + 1}: indented python block (not run): "
                                "put it at column 0")
            flags = pending[1].split() if pending else []
            setup = None
            kinds = set()
            for flag in flags:
                if flag.startswith("setup="):
                    setup = flag.removeprefix("setup=")
                    if setup not in SETUPS:
                        problems.append(f"{path}:{i + 1}: unknown setup {setup!r}; "
                                        f"known: {sorted(SETUPS)}")
                elif flag in FLAGS:
                    kinds.add(flag)
                else:
                    problems.append(f"{path}:{i + 1}: unknown example flag {flag!r}")
            code = "\n".join(lines[i + 1:end]) + "\n"
            examples.append(Example(path, i + 1, code, setup, "gpu" in kinds, "grad" in kinds))
        elif pending:
            problems.append(f"{path}:{pending[0]}: marker not followed by a python block "
                            f"(a {lang or 'plain'} block)")
        pending = None
        i = end + 1
    if pending:
        problems.append(f"{path}:{pending[0]}: marker not followed by a python block")
    return examples, problems


def documentation_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def collect(root: Path = ROOT) -> tuple[list[Example], list[str]]:
    """Every example of the documentation, identical ones (same code and flags) once."""
    seen: dict[tuple, Example] = {}
    problems: list[str] = []
    for file in documentation_files(root):
        found, wrong = parse(file.read_text(encoding="utf-8"), str(file.relative_to(root)))
        problems += wrong
        for example in found:
            seen.setdefault((example.code, example.setup, example.gpu, example.grad), example)
    return list(seen.values()), problems


def run(example: Example) -> dict:
    """Execute one example in a fresh namespace (its setup's names); returns the namespace.
    CPU examples run through the PyTorch path; raises whatever the example raises."""
    torch.manual_seed(0)
    namespace = SETUPS[example.setup]() if example.setup else {}
    namespace["__name__"] = "__docs_example__"
    backend = contextlib.nullcontext() if example.gpu else use_backend("torch")
    autograd = contextlib.nullcontext() if example.grad else torch.no_grad()
    with backend, autograd:
        exec(compile(example.code, example.name, "exec"), namespace)  # noqa: S102
    return namespace
