"""What ``dawin-fast bench`` and ``dawin-fast demo`` print on a busy machine and into a log:
the noise note under load, no stray torch warning, progress lines without a terminal,
and models that do not depend on the core count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dawin_fast.app.cli import main

pytestmark = pytest.mark.usefixtures("torch_backend")


@pytest.fixture
def heavy_load(monkeypatch):
    """A load average far above any core count (os.getloadavg, as the benchmarks read it)."""
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))


@pytest.mark.parametrize("argv", [
    ["bench", "--e2e", "--methods", "plain_forward"],
    ["bench", "--filter", "fc2-one_group", "--methods", "premerged"],
], ids=["e2e", "layers"])
def test_bench_under_load_says_its_numbers_are_noisy(heavy_load, capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Noisy:" in out and "the load average was 64.0" in out
    assert "IQR" in out  # the spread is printed beside the median ratio


def test_bench_output_has_no_cuda_home_warning(tmp_path):
    """torch.compile (materialize_compiled) logs 'No CUDA runtime is found, using
    CUDA_HOME=...' on a machine with a CUDA toolkit and no GPU."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: torch does not log it")
    env = dict(os.environ, CUDA_HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from dawin_fast.app.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "bench", "--filter", "qkv-one_group",
         "--methods", "materialize_compiled"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| materialize_compiled |" in done.stdout
    assert "No CUDA runtime" not in done.stdout + done.stderr


def test_demo_prints_plain_progress_lines_when_stderr_is_no_terminal(capsys, monkeypatch):
    monkeypatch.delenv("DAWIN_FAST_PROGRESS", raising=False)
    assert main(["demo", "--epochs", "2,1", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "training the general model: epoch 1/2, 0 s" in err.splitlines()
    assert any(line.startswith("fine-tuning it on clean digits: epoch 1/1")
               for line in err.splitlines())
    assert "\r" not in err and "epoch" not in out


def test_demo_models_are_the_same_on_any_thread_count():
    from dawin_fast.app.demo import build_models, load_digits_data

    data = load_digits_data(0)
    threads = torch.get_num_threads()
    states = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            states.append(build_models(data, seed=0, epochs=(1, 1))[1].state_dict())
    finally:
        torch.set_num_threads(threads)
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
