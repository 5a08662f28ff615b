"""The verifier (``dawin_fast.verify``) and its place in the dispatch, with the GPU faked.

The CUDA facts are faked the way ``tests/test_measured_dispatch.py`` fakes them: the
dispatch believes it runs compiled kernels on "Fake GPU sm_89", and
``kernels.interp_matmul`` is replaced by injected candidates, named by their config: a
right one, and ones that corrupt one k16 slice of one tile, return a NaN, leave a row
unwritten, raise, or differ between launches. No real timing: the timers are fakes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import dawin_fast
from dawin_fast import measured, ops, verify
from dawin_fast.reference import merged_reference

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "Fake GPU sm_89"
RIGHT = [("combine", None), ("rowscaled", None)]
BAD = [("epilogue", "kslice"), ("epilogue", "nan"), ("swapab", "unwritten"),
       ("swapab", "raises"), ("wstat", "flaky")]
EXPECTED = {"epilogue:kslice": "bound", "epilogue:nan": "nonfinite",
            "swapab:unwritten": "unwritten", "swapab:raises": "raised",
            "wstat:flaky": "nonrepeatable", "combine": "ok", "rowscaled": "ok"}


def layer(rows_per_group: int = 5, groups: int = 4, num_models: int = 2, n_dim: int = 40,
          k_dim: int = 64):
    """fp16 (a 16-bit bound), K = 64: four k16 slices."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows_per_group * groups, k_dim, generator=gen).half()
    weight = (torch.randn(num_models, n_dim, k_dim, generator=gen) / 8).half()
    coeffs = torch.rand(groups, num_models, generator=gen)
    offsets = torch.arange(groups + 1) * rows_per_group
    bias = torch.randn(num_models, n_dim, generator=gen).half()
    return x, weight, coeffs, offsets, bias


class FakeKernels:
    """``interp_matmul`` stand-in: each config one behaviour; counts the launches."""

    def __init__(self) -> None:
        self.launched: list[str] = []
        self.flaky = 0

    def __call__(self, x, weight, coeffs, offsets, bias=None, *, strategy=None, config=None,
                 out=None, call=None):
        name = ops._choice_name(strategy, config)
        self.launched.append(name)
        y = torch.empty(x.shape[0], weight.shape[1], dtype=x.dtype) if out is None else out
        if config == "raises":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        right = ops.interp_linear_torch(x, weight, coeffs, offsets, bias)
        if config == "unwritten":
            y[:7] = right[:7]
            y[8:] = right[8:]  # row 7 keeps whatever was there
            return y
        y.copy_(right)
        if config == "kslice":  # one 16x16 tile computed without its k-slice 16..31
            cut = x.clone()
            cut[:, 16:32] = 0
            y[:16, :16] = merged_reference(cut, weight, coeffs, offsets, bias)[0][:16, :16]
        elif config == "nan":
            y[3, 5] = math.nan
        elif config == "flaky":  # within the bound, but not bitwise repeatable
            self.flaky += 1
            if self.flaky % 2 == 0:  # one unit in the last place
                y.view(torch.int16)[0, 0] += 1
        return y


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """Compiled kernels on a fake GPU, the caches in a fresh directory, verification on,
    measuring off (tests turn it on); the candidates ``set_candidates`` gives."""
    monkeypatch.setenv(measured.ENV_CACHE_DIR, str(tmp_path))
    measured.clear(disk=False)
    verify.clear(disk=False)
    verify.set_verification(True)
    fake = FakeKernels()
    fake.candidates = RIGHT + BAD
    monkeypatch.setattr(ops.kernels, "interp_matmul", fake)
    monkeypatch.setattr(ops.planning, "candidates", lambda call: list(fake.candidates))
    monkeypatch.setattr(ops, "_compiled_kernels", lambda x: True)
    monkeypatch.setattr(ops, "_gpu_device", lambda x: fake.device)
    monkeypatch.setattr(ops, "_gpu_key", lambda call: f"key {call.num_rows}")
    fake.device = DEVICE
    fake.capturing = False
    monkeypatch.setattr(ops, "_is_capturing", lambda x: fake.capturing)
    fake.dir = tmp_path
    yield fake
    verify.set_verification(None)
    measured.set_enabled(None)
    measured.clear(disk=False)
    verify.clear(disk=False)


def fastest_first(order: list[str]):
    """A fake timer under which the candidates in ``order`` are fastest first."""
    timed: list[str] = []

    def timer(run, device):
        before = len(fake_launches)
        run()
        name = fake_launches[before]
        timed.append(name)
        return 1.0 + order.index(name)
    return timer, timed


fake_launches: list[str] = []


def excluded_lines(record) -> list[str]:
    return [str(w.message) for w in record if "excluded after verification" in str(w.message)]


def test_each_bad_candidate_is_excluded_and_the_right_ones_kept(fake_gpu, recwarn):
    """Measuring on, and the timer says the bad candidates are the fastest: a dispatch that
    only timed would pick one. Each is excluded for its own reason, only the two right
    ones are timed, the faster of them serves; one warning line per exclusion."""
    measured.set_enabled(True)
    global fake_launches
    fake_launches = fake_gpu.launched
    order = [ops._choice_name(*c) for c in BAD] + ["rowscaled", "combine"]
    timer, timed = fastest_first(order)
    x, weight, coeffs, offsets, bias = layer()
    with measured.use_timer(timer):
        assert ops._gpu_choice(x, weight, 4, coeffs, offsets, bias) == ("rowscaled", None,
                                                                         True)
    assert sorted(timed) == ["combine", "rowscaled"]
    for name, reason in EXPECTED.items():
        assert verify.lookup(DEVICE, "key 20", name).reason == reason, name
    lines = excluded_lines(recwarn)
    assert len(lines) == len(BAD)
    [bound] = [line for line in lines if "epilogue config kslice" in line]
    assert "on Fake GPU sm_89" in bound and "float16 x[20, 64] W[2, 40, 64] 4 groups" in bound
    assert "worst error" in bound and "x its bound" in bound
    # Each candidate ran twice for its verdict (the raising one once), nothing more: later
    # calls reuse the verdicts and the choice, and warn no more.
    launches = len(fake_gpu.launched)
    assert launches == 2 * len(EXPECTED) - 1 + len(timed)
    recwarn.clear()
    with measured.use_timer(timer):
        assert ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)[:2] == ("rowscaled", None)
    assert len(fake_gpu.launched) == launches and not excluded_lines(recwarn)


def test_the_op_is_served_by_a_verified_kernel_or_the_pytorch_path(fake_gpu, recwarn):
    """Through ``interp_linear`` (measuring off: the model's pick, here a bad one): the
    plainest verified candidate serves; with no right candidate the PyTorch path serves,
    and the warning says so."""
    x, weight, coeffs, offsets, bias = layer()
    expected = ops.interp_linear_torch(x, weight, coeffs, offsets, bias)
    fake_gpu.candidates = [("epilogue", "kslice"), ("swapab", "raises"), ("combine", None)]
    with dawin_fast.skip_value_checks():
        y = dawin_fast.interp_linear(x, weight, coeffs, offsets, bias)
    assert torch.equal(y, expected)
    assert fake_gpu.launched[-1] == "combine"
    assert verify.lookup(DEVICE, "key 20", "epilogue:kslice").reason == "bound"
    fake_gpu.candidates = [("epilogue", "nan"), ("swapab", "unwritten")]
    x2, w2, c2, o2, b2 = layer(rows_per_group=6)
    before = len(fake_gpu.launched)
    with dawin_fast.skip_value_checks():
        y = dawin_fast.interp_linear(x2, w2, c2, o2, b2)
    assert len(fake_gpu.launched) == before + 4  # two launches each, none to serve
    assert torch.equal(y, ops.interp_linear_torch(x2, w2, c2, o2, b2))
    assert any("every fused kernel candidate failed verification on Fake GPU sm_89" in
               str(w.message) and "the PyTorch path serves" in str(w.message)
               for w in recwarn)
    assert dawin_fast.kernel_choice(x2, w2, c2).endswith("[every kernel failed verification]")


def test_verdicts_are_cached_per_device_and_version(fake_gpu, monkeypatch, recwarn):
    x, weight, coeffs, offsets, bias = layer()
    ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)
    [path] = fake_gpu.dir.glob("verify-*.json")
    assert path.name.removeprefix("verify-") == measured.cache_file(DEVICE).name.removeprefix(
        "dispatch-")
    data = json.loads(path.read_text())
    assert data["device"] == DEVICE and data["versions"] == measured.versions()
    # measuring off: the model's pick (combine, first) is verified, nothing else
    assert data["verdicts"]["key 20"]["combine"]["passed"] is True
    fake_gpu.candidates = BAD + RIGHT
    measured.set_enabled(True)  # every candidate is verified before it is timed
    with measured.use_timer(lambda run, device: 1.0):
        ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)
    measured.set_enabled(False)
    launches = len(fake_gpu.launched)
    data = json.loads(path.read_text())
    assert {n: v["reason"] for n, v in data["verdicts"]["key 20"].items()} == EXPECTED
    assert math.isinf(verify.lookup(DEVICE, "key 20", "epilogue:nan").worst)
    # A new process: the verdicts come from disk (no launch); the excluded model's pick
    # is reported again, once.
    verify.clear(disk=False)
    recwarn.clear()
    for _ in range(2):
        assert ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)[:2] == ("combine", None)
    assert len(fake_gpu.launched) == launches
    [line] = excluded_lines(recwarn)
    assert "kernel epilogue config kslice excluded" in line
    # Another device, then another Triton: verified again (the model's pick, then
    # combine: two launches each).
    fake_gpu.device = "Other GPU sm_80"
    ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)
    assert fake_gpu.launched[launches:] == ["epilogue:kslice"] * 2 + ["combine"] * 2
    fake_gpu.device = DEVICE
    real = measured.versions()
    monkeypatch.setattr(measured, "versions", lambda: {**real, "triton": "9.9.9"})
    ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)
    assert len(fake_gpu.launched) == launches + 8
    assert len(list(fake_gpu.dir.glob("verify-*.json"))) == 3
    verify.clear()
    assert not list(fake_gpu.dir.glob("verify-*.json"))


def test_the_off_switch(fake_gpu, monkeypatch):
    """Off: the timer alone decides, and the fastest (a bad one) wins; that is what the
    verifier prevents."""
    measured.set_enabled(True)
    global fake_launches
    fake_launches = fake_gpu.launched
    timer, timed = fastest_first(["epilogue:kslice", "combine", "rowscaled", "epilogue:nan",
                                  "swapab:unwritten", "wstat:flaky"])
    fake_gpu.candidates = [c for c in RIGHT + BAD if c[1] != "raises"]
    x, weight, coeffs, offsets, bias = layer()
    dawin_fast.set_verification(False)
    with measured.use_timer(timer):
        assert ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)[:2] == ("epilogue",
                                                                             "kslice")
    assert len(fake_gpu.launched) == len(timed) == 6  # timed only, no verification
    assert not list(fake_gpu.dir.glob("verify-*.json"))
    dawin_fast.set_verification(None)
    monkeypatch.setenv(verify.ENV_VERIFY, "0")
    assert not verify.enabled()
    monkeypatch.setenv(verify.ENV_VERIFY, "1")
    assert verify.enabled()
    # On again: the cached (bad) choice is rejected, the right ones are measured again.
    with measured.use_timer(timer):
        assert ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)[:2] == ("combine", None)


def test_measured_choose_never_picks_what_the_screen_rejects(fake_gpu):
    """``measured.choose`` with a screen: a cached choice it rejects is not reused, what it
    rejects is never timed, and with nothing accepted there is no choice."""
    measured.set_enabled(True)
    timed = []

    def timer(run, device):
        timed.append(run.__name__)
        return {"a": 1.0, "b": 2.0, "c": 3.0}[run.__name__]

    def named(name):
        def run():
            return None
        run.__name__ = name
        return run

    runs = {n: named(n) for n in "abc"}
    cpu = torch.device("cpu")
    with measured.use_timer(timer):
        assert measured.choose("dev", "k", runs, "c", torch_device=cpu) == ("a", True)
        asked = []

        def screen(names):
            asked.append(list(names))
            return [n for n in names if n != "a"]
        assert measured.choose("dev", "k", runs, "c", torch_device=cpu,
                               screen=screen) == ("b", True)
        assert timed == ["a", "b", "c", "b", "c"] and asked == [["a"], ["a", "b", "c"]]
        assert measured.choose("dev", "k", runs, "c", torch_device=cpu,
                               screen=lambda names: []) == (None, False)
        assert measured.choose("dev", "k", runs, "c", torch_device=cpu, can_measure=False,
                               screen=lambda names: [n for n in names if n == "c"]) == (
            "c", False)
        measured.set_enabled(False)  # the model's pick, or the first accepted after it
        assert measured.choose("dev", "k", runs, "a", torch_device=cpu,
                               screen=screen) == ("b", False)
    assert len(timed) == 5


def test_capture_uses_cached_verdicts_only(fake_gpu, recwarn):
    """Inside CUDA-graph capture nothing is launched to verify: a candidate passes if it
    passed for this key, or on this device for another key; with none, the plainest
    candidate runs unverified, said once."""
    x, weight, coeffs, offsets, bias = layer()
    fake_gpu.candidates = [("swapab", "raises"), ("epilogue", "kslice"), ("combine", None)]
    fake_gpu.capturing = True
    assert ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)[:2] == ("combine", None)
    assert not fake_gpu.launched
    assert sum("running combine unverified" in str(w.message) for w in recwarn) == 1
    ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)
    assert sum("running combine unverified" in str(w.message) for w in recwarn) == 1
    fake_gpu.capturing = False  # eager: verified (the model's pick fails, combine passes)
    fake_gpu.candidates = [("epilogue", "kslice"), ("swapab", "unwritten"), ("combine", None),
                           ("rowscaled", None)]
    assert ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)[:2] == ("combine", None)
    launches = len(fake_gpu.launched)
    fake_gpu.capturing = True
    assert ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)[:2] == ("combine", None)
    # Another key under capture: combine passed on this device for another key;
    # rowscaled never ran here, swapab:unwritten failed: neither is chosen.
    fake_gpu.candidates = [("swapab", "unwritten"), ("rowscaled", None), ("combine", None)]
    x2, w2, c2, o2, b2 = layer(rows_per_group=6)
    assert ops._gpu_choice(x2, w2, 4, c2, o2, b2)[:2] == ("combine", None)
    assert len(fake_gpu.launched) == launches


DIE = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, sys.argv[1])
    from dawin_fast import verify
    ref = torch.zeros(4, 3)

    def launch(out):
        os._exit(3)  # as a sticky CUDA error or a segfault would end the process

    verify.verify("Fake GPU sm_89", "key 20", "swapab:dies", launch, lambda: (ref, ref + 1),
                  (4, 3), torch.float16, torch.device("cpu"), "float16 x[4, 8] W[2, 3, 8]")
""")


def test_a_process_that_dies_while_verifying_excludes_that_candidate(fake_gpu):
    """A real death: a subprocess dies inside a candidate's launch. Its marker is left on
    disk; the next process excludes the candidate there, says so once, and removes it."""
    env = dict(os.environ, **{measured.ENV_CACHE_DIR: str(fake_gpu.dir)})
    done = subprocess.run([sys.executable, "-c", DIE, str(ROOT)], env=env, timeout=120)
    assert done.returncode == 3
    [marker] = fake_gpu.dir.glob("verifying-*.json")
    assert json.loads(marker.read_text())["candidate"] == "swapab:dies"
    # A marker of a process that still runs (this one's parent) is not a death.
    live = marker.with_name(marker.name.replace(str(json.loads(marker.read_text())["pid"]),
                                                "live"))
    live.write_text(json.dumps({**json.loads(marker.read_text()), "pid": os.getppid(),
                                "candidate": "swapab:running"}))
    with pytest.warns(RuntimeWarning, match="swapab config dies excluded .*died during its "
                                            "launches"):
        verdict = verify.lookup(DEVICE, "key 20", "swapab:dies")
    assert verdict.reason == "died" and not verdict.passed
    assert not marker.exists() and live.exists()
    assert verify.lookup(DEVICE, "key 20", "swapab:running") is None
    verify.clear(disk=False)  # the next process reads the exclusion from disk
    assert verify.lookup(DEVICE, "key 20", "swapab:dies").reason == "died"
    # and the dispatch does not choose it
    fake_gpu.candidates = [("swapab", "dies"), ("combine", None)]
    x, weight, coeffs, offsets, bias = layer()
    assert ops._gpu_choice(x, weight, 4, coeffs, offsets, bias)[:2] == ("combine", None)
    assert "swapab:dies" not in fake_gpu.launched


def test_the_check_itself_on_each_behaviour():
    """``verify.check`` directly on the CPU: the reason of each behaviour."""
    x, weight, coeffs, offsets, bias = layer()
    ref, bound = verify.reference_bound(x, weight, coeffs, offsets, bias)
    fake = FakeKernels()
    for name, reason in EXPECTED.items():
        strategy, _, config = name.partition(":")

        def launch(out, strategy=strategy, config=config or None):
            fake(x, weight, coeffs, offsets, bias, strategy=strategy, config=config, out=out)
        verdict = verify.check(launch, ref, bound, (20, 40), torch.float16,
                               torch.device("cpu"), "toy")
        assert verdict.reason == reason, name
        assert verdict.passed == (reason == "ok")
    # the right kernel's honest fp16 rounding is well inside the bound
    assert verify.check(lambda out: fake(x, weight, coeffs, offsets, bias, strategy="combine",
                                         out=out), ref, bound, (20, 40), torch.float16,
                        torch.device("cpu")).worst < 0.5
