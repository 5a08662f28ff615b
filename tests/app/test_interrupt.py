"""Ctrl-C while the command is still importing prints one line and exits 130.

The interrupt is made deterministic: a stand-in ``torch`` package, first on the path,
sends SIGINT to its own process when imported, i.e. in the middle of dawin_fast's
imports. No real torch is imported, so each run takes well under a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import dawin_fast
from dawin_fast import _launch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("dawin-fast")
INTERRUPTING_TORCH = ("import os, signal, time\n"
                      "os.kill(os.getpid(), signal.SIGINT)\n"
                      "time.sleep(10)\n")


@pytest.fixture(scope="module")
def fake_torch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake_torch")
    (root / "torch").mkdir()
    (root / "torch" / "__init__.py").write_text(INTERRUPTING_TORCH)
    return root


def _run(command: list[str], fake_torch: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    environ.update(PYTHONPATH=f"{fake_torch}{os.pathsep}{ROOT}", **env)
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=60)


COMMANDS = {
    "python -m dawin_fast": [sys.executable, "-m", "dawin_fast", "demo"],
    "python -m dawin_fast.app.cli": [sys.executable, "-m", "dawin_fast.app.cli", "eval"],
    "dawin-fast": [str(SCRIPT), "--help"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_ctrl_c_during_imports_is_one_line_and_130(fake_torch, name):
    if name == "dawin-fast" and not SCRIPT.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    done = _run(COMMANDS[name], fake_torch)
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr == "dawin-fast: interrupted\n", done.stderr[-2000:]


def test_under_torchrun_only_rank_0_speaks(fake_torch):
    done = _run(COMMANDS["python -m dawin_fast.app.cli"], fake_torch, RANK="1",
                WORLD_SIZE="2")
    assert done.returncode == 130 and done.stderr == "", done.stderr[-2000:]


def test_a_program_importing_the_library_keeps_its_sigint_handler():
    """Only the command's process is changed: here (pytest) Ctrl-C is still
    KeyboardInterrupt."""
    assert dawin_fast is not None and not _launch.started_as_command()
    assert signal.getsignal(signal.SIGINT) is not _launch._interrupted


def test_main_hands_ctrl_c_back_to_python(monkeypatch):
    """Once main runs, its own handlers take over: the import-time handler is removed."""
    from dawin_fast.app.cli import main

    previous = signal.signal(signal.SIGINT, _launch._interrupted)
    try:
        assert main(["--version"]) == 0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
