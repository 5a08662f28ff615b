"""What a new user meets first: the filter the README and --help show, and the eval
table's throughput column."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dawin_fast import use_backend
from dawin_fast.app.cli import build_parser, main
from dawin_fast.app.evaluate import format_table
from dawin_fast.bench import layers as bench
from tests.app.cli_files import run_error

README = Path(__file__).resolve().parents[2] / "README.md"


def _bench_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join(sub.choices["bench"].format_help().split())


def documented_filters() -> set[str]:
    readme = re.findall(r"dawin-fast bench .*?\[--filter (\S+?)\]", README.read_text())
    helped = re.findall(r"e\.g\. (\S+?);", _bench_help())
    assert readme and helped
    return {*readme, *helped}


@pytest.mark.parametrize("text", sorted(documented_filters()))
def test_the_documented_filter_runs_here(text, tmp_path, capsys):
    """The example filter selects cases on this machine, and on a GPU's case list."""
    assert any(text in c.id for c in bench.gpu_cases())
    output = tmp_path / "bench.md"
    with use_backend("torch"):
        assert main(["bench", "--filter", text, "--methods", "premerged",
                     "--output", str(output)]) == 0
    assert "| premerged |" in output.read_text()
    capsys.readouterr()


def test_a_gpu_only_filter_on_a_cpu_says_so_and_lists_the_ids_here(capsys):
    if bench.default_cases() == bench.gpu_cases():
        pytest.skip("a GPU is present: ViT-B-32-fc1 exists here")
    run_error(["bench", "--filter", "ViT-B-32-fc1"], capsys, "--filter ViT-B-32-fc1",
              "names GPU cases", bench.default_cases()[0].id)


def _set(seconds: float, n: int = 3) -> dict:
    return {"model 0": {"accuracy": 0.5, "seconds": seconds, "n": n, "correct": 1}}


@pytest.mark.parametrize("seconds, shown", [(10.0, "0.3"), (1 / 7, "21"), (0.25, "12"),
                                            (3 / 12345.0, "12345"), (0.0, "-")])
def test_eval_table_keeps_slow_throughput_visible(seconds, shown):
    """Images/s with three significant digits below 100 (slow methods showed 0)."""
    table = format_table({"test": _set(seconds)})
    row = table.splitlines()[-1]
    assert row.split()[-1] == shown, row


def test_readme_says_how_to_install_the_cpu_build_of_torch_first():
    """Without it a CPU-only machine downloads ~6 GB of CUDA wheels; torchvision must come
    from the same index to match the torch build."""
    text = README.read_text()
    commands = re.findall(r"^pip install (.*)$", text, re.M)
    cpu = [c for c in commands if "--index-url https://download.pytorch.org/whl/cpu" in c]
    assert cpu and {"torch", "torchvision"} <= set(cpu[0].split())
