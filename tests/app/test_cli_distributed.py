"""``dawin-fast eval`` under torchrun (gloo on the CPU) against the one-process run.

Every process has a time limit and none outlives its test (``tests/launch.py``). Every
run uses one intra-op thread per process: torchrun gives each of several processes per
node one thread, and PyTorch's CPU attention for short sequences (this tiny ViT has 17
tokens) gives other last bits with other thread counts, whatever the sharding.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch

from dawin_fast import use_backend
from dawin_fast.app.cli import main
from tests.app.cli_files import make_models
from tests.launch import base_env, free_port, launch, python

TIMEOUT = 180  # seconds per launch; one takes ~20-30 s on 2 shared cores
ARCH = "tiny-dist-vit"
N = 13  # in batches of 2: 7 global batches, uneven over 2 and 3 ranks


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Config, a full-CLIP and a visual-only checkpoint, two heads, an ImageFolder of N
    images, and two copies whose last image is broken (in the last rank's shard): in
    "corrupt" a truncated JPEG, which passes PIL's verify() (headers only) and fails when
    decoded, so that the failure happens inside the run, on one rank; in "unreadable" a
    file that is no image at all, which every rank finds before any work."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cli_dist")
    make_models(root, torch.Generator().manual_seed(0), ARCH)
    rng = np.random.default_rng(0)
    for folder in ("images", "corrupt", "unreadable"):
        for i in range(N):
            path = root / folder / ("abc"[i % 3]) / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
    # ImageFolder order: class folders, then files: c/11 is the last sample.
    last = root / "corrupt" / "c" / "11.png"
    last.unlink()
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
        last.with_suffix(".jpg"), quality=95)
    data = last.with_suffix(".jpg").read_bytes()
    last.with_suffix(".jpg").write_bytes(data[: len(data) // 2])
    (root / "unreadable" / "c" / "11.png").write_bytes(b"not a png")
    return root


def eval_argv(files, data: str, output) -> list[str]:
    return ["eval", "--arch", ARCH, "--model-config", str(files / f"{ARCH}.json"),
            "--checkpoints", str(files / "zs.pt"), str(files / "ft.safetensors"),
            "--heads", str(files / "head_zs.pt"), str(files / "head_ft.pt"),
            "--data", str(files / data), "--workers", "0", "--batch-size", "2",
            "--clusters", "2", "--offset-adjustment", "--output", str(output)]


def comparable(report: dict) -> str:
    """The report without its timing and world-size fields, as bytes to compare."""
    report = json.loads(json.dumps(report))
    report.pop("world_size")
    for detail in report["results"].values():
        for method in detail["methods"].values():
            method.pop("seconds")
            method.pop("images_per_s")
    return json.dumps(report, indent=2)


def accuracy_table(stdout: str) -> list[str]:
    """The printed table (accuracies only: a header, a rule, six methods)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method"))
    return lines[start:start + 8]


def messages(stderr: str) -> list[str]:
    """stderr lines that are not progress bars or open_clip's random-init warning."""
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr)]
    return [line for line in lines if line and not re.match(
        r"(\S+: )?(expert pass|merged passes)|WARNING:root:No pretrained weights", line)]


@pytest.fixture(scope="module")
def one_process(files, tmp_path_factory):
    """The reference: the same command in this process (no group), one thread."""
    out = tmp_path_factory.mktemp("one") / "report.json"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stdout = io.StringIO()
        with use_backend("torch"), contextlib.redirect_stdout(stdout):
            assert main(eval_argv(files, "images", out)) == 0
    finally:
        torch.set_num_threads(previous)
    return json.loads(out.read_text()), stdout.getvalue()


@pytest.mark.parametrize("world", [2, 3])
def test_torchrun_eval_gives_the_one_process_report(files, one_process, tmp_path, world):
    reference, reference_stdout = one_process
    out = tmp_path / "report.json"
    command = python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                     str(world), "-m", "dawin_fast.app.cli", *eval_argv(files, "images", out))
    (done,) = launch([command], [base_env(DAWIN_FAST_PROGRESS="1")], timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == world and reference["world_size"] == 1
    assert comparable(report) == comparable(reference)
    per_sample = report["results"]["images"]["per_sample"]
    assert len(per_sample["coefficients"]) == len(per_sample["cluster"]) == N
    assert accuracy_table(done.stdout) == accuracy_table(reference_stdout)
    # rank 0 alone prints the table, writes the file, and shows progress bars
    assert done.stdout.count("DaWin (no mixture)") == 1 and done.stdout.count("wrote ") == 1
    assert list(tmp_path.iterdir()) == [out]
    rank0_batches = 7 // world  # rank 0 holds batches [0, 7 // world)
    assert f"expert pass:   0%|          | 0/{rank0_batches}" in done.stderr
    assert f"0/{rank0_batches + 1}" not in done.stderr  # the last rank's larger shard


def test_corrupt_image_on_one_rank_stops_every_rank(files, tmp_path):
    """Ranks started as torchrun starts them (its environment), so that each one's exit
    code and output can be checked: the last rank fails on a corrupt image in its shard;
    every rank exits with the same non-zero code, rank 0 prints one line naming the rank
    and the file, no rank prints a traceback, and no report is written."""
    out = tmp_path / "report.json"
    port, world = str(free_port()), 2
    envs = [base_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                     LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            for r in range(world)]
    command = python("-m", "dawin_fast.app.cli", *eval_argv(files, "corrupt", out))
    finished = launch([command] * world, envs, timeout=TIMEOUT)
    codes = {f.returncode for f in finished}
    assert len(codes) == 1 and codes != {0}, [f.stderr[-2000:] for f in finished]
    (line,) = messages(finished[0].stderr)
    assert line.startswith("dawin-fast eval: error: rank 1: ") and "11.jpg" in line, line
    assert messages(finished[1].stderr) == []
    assert not any("Traceback" in f.stderr for f in finished)
    assert not out.exists()


def test_unreadable_image_fails_every_rank_before_any_work(files, tmp_path):
    """A file that is no image is found by every rank's up-front check, before the process
    group exists: a rank exits 2 with one line naming the file (there is nothing to share
    yet), and no report is written. torchrun's agent stops the other workers as soon as one
    fails, so a slower rank may be stopped before its own check prints: one line or two
    (CI on 2 loaded cores printed one)."""
    out = tmp_path / "report.json"
    command = python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     "-m", "dawin_fast.app.cli", *eval_argv(files, "unreadable", out))
    (done,) = launch([command], [base_env()], timeout=TIMEOUT)
    assert done.returncode != 0
    ours = [line for line in messages(done.stderr) if line.startswith("dawin-fast eval:")]
    assert 1 <= len(ours) <= 2 and all("11.png" in line and "not a readable image" in line
                                       for line in ours), ours
    # torchrun's own agent prints its ChildFailedError traceback; none comes from our code.
    assert not re.search(r'File ".*dawin_fast', done.stderr)
    assert not out.exists()


def test_only_eval_runs_under_torchrun(monkeypatch, capsys):
    """demo, bench and selfcheck would run whole on every rank: refused, in one line."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["selfcheck"]) == 2
    assert capsys.readouterr().err.strip() == ("dawin-fast selfcheck: error: only eval runs "
                                               "under torchrun; run dawin-fast selfcheck "
                                               "without it")
    # An error raised before any exchange is printed by the rank that raised it (only
    # errors shared through dawin_fast.distributed are left to rank 0).
    monkeypatch.setenv("RANK", "1")
    assert main(["selfcheck"]) == 2
    assert "only eval runs under torchrun" in capsys.readouterr().err


def test_huge_pixels_fail_every_rank_naming_the_data(files, tmp_path):
    """Finite but huge pixels (x 1e20) overflow the model into NaN logits: every rank
    finds them up front (before the process group) and exits 2 naming the file and the
    problem, as one process does (tests/app/test_outputs.py)."""
    data = tmp_path / "huge.pt"
    gen = torch.Generator().manual_seed(0)
    torch.save({"images": torch.randn(4, 3, 16, 16, generator=gen) * 1e20,
                "labels": torch.tensor([0, 1, 2, 0])}, data)
    out = tmp_path / "report.json"
    port, world = str(free_port()), 2
    envs = [base_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                     LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            for r in range(world)]
    command = python("-m", "dawin_fast.app.cli", *eval_argv(files, str(data), out))
    finished = launch([command] * world, envs, timeout=TIMEOUT)
    assert [f.returncode for f in finished] == [2, 2], [f.stderr[-2000:] for f in finished]
    for f in finished:
        (line,) = messages(f.stderr)
        assert line.startswith(f"dawin-fast eval: error: dataset {data}: pixel values reach")
    assert not out.exists()


STOPPING_RANK = """
import os, signal, sys, types
from dawin_fast import distributed
from dawin_fast.app import cli, eval_command

def run_eval(plan, run, progress=False):
    distributed.gather_objects(run.rank)  # collective 1: every rank is there
    if run.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)  # as `kill -STOP`: no error, no exit
    with distributed.shared_errors():  # a timeout is not shared (that would wait again)
        distributed.gather_objects(run.rank)  # collective 2: rank 1 never comes

PLAN = types.SimpleNamespace(device="cpu", notes=())
eval_command.prepare_eval = lambda args, progress=iter: PLAN
eval_command.run_eval = run_eval
sys.exit(cli.main(["eval", "--arch", "a", "--checkpoints", "a", "b", "--heads", "a", "b",
                   "--data", "d", "--dist-timeout", "3"]))
"""


def test_a_stopped_rank_is_named_after_the_collective_timeout(tmp_path):
    """Rank 1 stops (SIGSTOP) between two collectives: rank 0 gives up after
    --dist-timeout (not gloo's 30 minutes), prints one line naming rank 1 and exits 1.
    The stopped rank is killed here (torchrun's agent would do it when rank 0 exits)."""
    import subprocess

    port, world = str(free_port()), 2
    procs = [subprocess.Popen(python("-c", STOPPING_RANK), env=base_env(
        RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=port), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True) for r in range(world)]
    try:
        _, err = procs[0].communicate(timeout=TIMEOUT)
        assert procs[0].returncode == 1, err[-3000:]
        assert messages(err) == ["dawin-fast eval: error: rank 1 stopped answering: never "
                                 "reached collective #2 within the process group's timeout "
                                 "(stopped, hung or killed) (--dist-timeout 3 s)"], err[-3000:]
        assert procs[1].poll() is None  # still stopped: it never printed or exited
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()


def test_timeout_messages_and_option(capsys):
    from dawin_fast.distributed import RankTimeout

    assert str(RankTimeout((1, 2), 4, 0)).startswith("ranks 1, 2 stopped answering: never "
                                                    "reached collective #4")
    assert "every rank reached it" in str(RankTimeout((), 4, 0))
    for value in ("0", "-1", "nan", "inf", "soon"):
        assert main(["eval", "--arch", "a", "--checkpoints", "a", "b", "--heads", "a", "b",
                     "--data", "d", "--dist-timeout", value]) == 2
        err = capsys.readouterr().err
        assert "argument --dist-timeout: expected a number of seconds > 0" in err, err
