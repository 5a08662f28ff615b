"""Start test processes that cannot outlive their test.

Every process started here, and every process those start (torchrun's workers run in
sessions of their own, so process groups cannot find them), carries one environment
token; ``launch`` kills whatever still carries it when the time limit passes, and checks
that nothing does when it returns.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN_VAR = "DAWIN_TEST_LAUNCH"


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """The test environment for a child: the PyTorch path of the op (no Triton
    interpreter), one intra-op thread per process (what torchrun gives each of several
    processes per node)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", TOKEN_VAR)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _carrying(token: str) -> list[int]:
    """Pids of live processes whose environment holds the token (Linux /proc)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def _kill_all(token: str) -> None:
    for _ in range(50):
        pids = _carrying(token)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def launch(commands: list[list[str]], envs: list[dict[str, str]], timeout: float
           ) -> list[Finished]:
    """Run the commands side by side; each gets its env plus the token. Raises
    ``TimeoutError`` (after killing them all) if they are not all done within ``timeout``
    seconds; fails if any process carrying the token survives."""
    token = uuid.uuid4().hex
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, TOKEN_VAR: token},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
             for cmd, env in zip(commands, envs, strict=True)]
    deadline = time.monotonic() + timeout
    try:
        outputs = []
        for proc in procs:
            left = max(deadline - time.monotonic(), 0.1)
            out, err = proc.communicate(timeout=left)
            outputs.append(Finished(proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        _kill_all(token)
        for proc in procs:
            proc.communicate()
        raise TimeoutError(f"not finished within {timeout} s: {commands}") from None
    finally:
        leftovers = _carrying(token)
        _kill_all(token)
    assert not leftovers, f"processes outlived their launch: {leftovers}"
    return outputs


def python(*args: str) -> list[str]:
    return [sys.executable, *args]
