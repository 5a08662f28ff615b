"""The documentation's python examples run as written (docs/development.md, "Examples run
as tests"), and the runner fails on a broken one."""

from __future__ import annotations

import re

import pytest
import torch

from tests.docs.examples import ROOT, Example, collect, documentation_files, parse, run

EXAMPLES, PROBLEMS = collect()


def test_markers_follow_the_convention():
    assert PROBLEMS == []


def test_every_python_block_is_collected():
    """The parser misses no block: as many examples per file as ```python fences in it."""
    for file in documentation_files():
        text = file.read_text(encoding="utf-8")
        found, _ = parse(text, file.name)
        fences = re.findall(r"^\s*```python\s*$", text, re.M)
        assert len(found) == len(fences), file
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example: Example):
    if example.gpu and not torch.cuda.is_available():
        pytest.skip(f"{example.name} needs a CUDA GPU")
    run(example)


# ------------------------------------------------------------------ the runner can fail


BROKEN = """\
Text.

<!-- example: setup=op_arguments -->
```python
from dawin_fast import interp_linear

interp_linear(x, weight, coeffs, offsets[:-1])  # offsets no longer end at the row count
```
"""


def test_a_broken_example_fails():
    (example,), problems = parse(BROKEN, "broken.md")
    assert problems == [] and example.setup == "op_arguments" and example.line == 4
    with pytest.raises(ValueError, match="offsets"):
        run(example)
    # ... and the same block with the call fixed runs
    fixed = Example("fixed.md", 4, example.code.replace("offsets[:-1]", "offsets"),
                    example.setup)
    run(fixed)


def test_a_name_the_setup_does_not_give_fails():
    (example,), _ = parse(BROKEN.replace("setup=op_arguments", "grad"), "broken.md")
    with pytest.raises(NameError):
        run(example)


@pytest.mark.parametrize("text, problem", [
    ("<!-- example: setup=linears -->\nSome text.\n", "marker not followed"),
    ("<!-- example: setup=linears -->\n```bash\nls\n```\n", "marker not followed"),
    ("<!-- example: setup=nope -->\n```python\npass\n```\n", "unknown setup"),
    ("<!-- example: gpuu -->\n```python\npass\n```\n", "unknown example flag"),
    ("- item\n\n  ```python\n  pass\n  ```\n", "indented python block"),
    ("```python\npass\n", "unclosed code fence"),
    ("```py\npass\n```\n", "tag it python"),
])
def test_convention_violations_are_found(text, problem):
    _, problems = parse(text, "bad.md")
    assert len(problems) == 1 and problem in problems[0], problems


def test_flags_are_read():
    text = "<!-- example: setup=linears gpu grad -->\n```python\npass\n```\n\n```python\n1\n```\n"
    (first, second), problems = parse(text, "x.md")
    assert problems == []
    assert (first.setup, first.gpu, first.grad, first.line) == ("linears", True, True, 2)
    assert (second.setup, second.gpu, second.grad, second.line) == (None, False, False, 6)


def test_readme_is_among_the_sources():
    assert ROOT / "README.md" in documentation_files()


def test_the_trained_coefficients_example_gives_the_gate_real_gradients():
    """Its loss is one a user would train with: the gate's gradients are of real size (a
    sum of LayerNorm outputs gave ~1e-6, which trains nothing)."""
    (example,) = [e for e in EXAMPLES
                  if e.path.endswith("trained-coefficients.md") and "loss.backward()" in e.code]
    namespace = run(example)
    grads = [p.grad for p in namespace["gate"].parameters()]
    assert all(g is not None for g in grads)
    assert max(float(g.abs().max()) for g in grads) > 1e-3
