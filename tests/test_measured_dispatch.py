"""The measured dispatch: the cache (``dawin_fast.measured``) with an injected
timer, the CPU path's loop vs row-scaled measurement, and what ``kernel_choice`` reports.

No real timing: every timer here is a fake that returns fixed seconds per candidate and
counts its calls, so the tests are deterministic.
"""

from __future__ import annotations

import json

import pytest
import torch

import dawin_fast
from dawin_fast import measured, ops, torch_path
from dawin_fast.reference import error_ratio, interp_linear_reference


class FakeTimer:
    """Seconds per candidate name; records what it timed."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self.timed: list[str] = []

    def __call__(self, run, device):
        run()  # the candidate must run (it writes a scratch output)
        name = self.names[run]
        self.timed.append(name)
        return self.seconds[name]


def runs(timer: FakeTimer, names: list[str]) -> dict:
    out = {}
    for name in names:
        out[name] = lambda: None
    timer.names = {fn: name for name, fn in out.items()}
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Measuring on, the cache in a fresh directory, no choice in memory."""
    monkeypatch.setenv(measured.ENV_CACHE_DIR, str(tmp_path))
    measured.clear(disk=False)
    measured.set_enabled(True)
    yield tmp_path
    measured.set_enabled(None)
    measured.clear(disk=False)


CPU = torch.device("cpu")


def choose(timer, names, prior="a", device="dev A", key="k", **kwargs):
    with measured.use_timer(timer):
        return measured.choose(device, key, runs(timer, names), prior, torch_device=CPU,
                               **kwargs)


def test_first_call_measures_second_reuses(cache):
    timer = FakeTimer({"a": 2.0, "b": 1.0, "c": 3.0})
    assert choose(timer, ["a", "b", "c"]) == ("b", True)
    assert sorted(timer.timed) == ["a", "b", "c"]
    assert choose(timer, ["a", "b", "c"]) == ("b", True)
    assert len(timer.timed) == 3, "the second call must reuse the choice"
    # A new process: nothing in memory, the file on disk.
    measured.clear(disk=False)
    assert choose(timer, ["a", "b", "c"]) == ("b", True)
    assert len(timer.timed) == 3
    [path] = cache.glob("dispatch-*.json")
    data = json.loads(path.read_text())
    assert data["device"] == "dev A" and data["choices"]["k"]["choice"] == "b"
    assert data["choices"]["k"]["seconds"] == {"a": 2.0, "b": 1.0, "c": 3.0}


def test_another_device_key_or_version_measures_again(cache, monkeypatch):
    timer = FakeTimer({"a": 2.0, "b": 1.0})
    choose(timer, ["a", "b"])
    choose(timer, ["a", "b"], device="dev B")
    assert len(timer.timed) == 4
    choose(timer, ["a", "b"], key="other")
    assert len(timer.timed) == 6
    real = measured.versions()
    monkeypatch.setattr(measured, "versions", lambda: {**real, "triton": "9.9.9"})
    choose(timer, ["a", "b"])
    assert len(timer.timed) == 8
    assert len(list(cache.glob("dispatch-*.json"))) == 3  # (A, old), (B, old), (A, new)


def test_a_corrupt_cache_file_is_ignored_with_a_warning(cache):
    timer = FakeTimer({"a": 2.0, "b": 1.0})
    path = measured.cache_file("dev A")
    path.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable dispatch cache"):
        assert choose(timer, ["a", "b"]) == ("b", True)
    assert len(timer.timed) == 2
    assert json.loads(path.read_text())["choices"]["k"]["choice"] == "b"  # rewritten
    measured.clear(disk=False)
    path.write_text(json.dumps({"choices": {"k": "b"}}))  # valid JSON, wrong shape
    with pytest.warns(RuntimeWarning, match="unreadable dispatch cache"):
        choose(timer, ["a", "b"])
    assert len(timer.timed) == 4


def test_off_switch_capture_and_clear(cache, monkeypatch):
    timer = FakeTimer({"a": 2.0, "b": 1.0})
    measured.set_enabled(False)
    assert choose(timer, ["a", "b"]) == ("a", False) and not timer.timed
    measured.set_enabled(None)
    monkeypatch.setenv(measured.ENV_MEASURE, "0")
    assert not measured.enabled()
    monkeypatch.setenv(measured.ENV_MEASURE, "1")
    # Inside CUDA-graph capture nothing is timed: the prior, or a cached choice.
    assert choose(timer, ["a", "b"], can_measure=False) == ("a", False) and not timer.timed
    assert choose(timer, ["a", "b"]) == ("b", True)
    assert choose(timer, ["a", "b"], can_measure=False) == ("b", True)
    assert len(timer.timed) == 2
    # One candidate: nothing to measure.
    assert choose(timer, ["a"]) == ("a", False)
    # A cached choice that is no longer a candidate is measured again.
    timer.seconds["d"] = 5.0
    assert choose(timer, ["a", "d"]) == ("a", True)
    assert timer.timed[-2:] == ["a", "d"]
    dawin_fast.clear_dispatch_cache()
    assert not list(cache.glob("dispatch-*.json"))
    assert choose(timer, ["a", "b"]) == ("b", True)
    assert timer.timed[-2:] == ["a", "b"] and len(timer.timed) == 6
    with pytest.raises(ValueError, match="not a candidate"):
        choose(timer, ["a", "b"], prior="z")


# ------------------------------------------------------------------------ the CPU path


def layer(rows_per_group: int, groups: int, num_models: int = 2, n_dim: int = 48,
          k_dim: int = 40):
    torch.manual_seed(0)
    x = torch.randn(rows_per_group * groups, k_dim)
    weight = torch.randn(num_models, n_dim, k_dim)
    coeffs = torch.rand(groups, num_models)
    offsets = torch.arange(groups + 1) * rows_per_group
    bias = torch.randn(num_models, n_dim)
    return x, weight, coeffs, offsets, bias


calls: list[str] = []  # strategies run: the timed runs, then each call's own


def spy_timer(seconds: dict[str, float]):
    timed = []

    def timer(run, device):
        before = len(calls)
        run()
        timed.append(calls[before])
        return seconds[calls[before]]
    return timer, timed


@pytest.fixture
def record_strategies(monkeypatch):
    """Every strategy the PyTorch path runs, in order (a timed run or a call's own)."""
    original = ops.interp_linear_torch

    def spy(x, weight, coeffs, offsets, bias=None, *, out=None, strategy=None):
        if strategy is None:
            strategy = ops._measured_cpu_strategy(x, weight, coeffs, offsets, bias,
                                                  int((offsets[1:] > offsets[:-1]).sum()))
        calls.append(strategy)
        return original(x, weight, coeffs, offsets, bias, out=out, strategy=strategy)

    calls.clear()
    monkeypatch.setattr(ops, "interp_linear_torch", spy)  # the op's call
    monkeypatch.setattr(torch_path, "interp_linear_torch", spy)  # the timed runs
    return calls


def test_cpu_path_measures_loop_against_rowscaled_once(cache, record_strategies):
    """30 rows per group at M = 2: the model picks row-scaled, but the two costs are close
    (within CPU_MEASURE_FACTOR), so both are timed; the fake timer says loop is faster."""
    x, weight, coeffs, offsets, bias = layer(30, 6)
    assert ops.cpu_strategy(180, 6, 2) == "rowscaled"
    with dawin_fast.use_backend("torch"):
        assert dawin_fast.kernel_choice(x, weight, coeffs) == "torch:rowscaled [model]"
        timer, timed = spy_timer({"loop": 1.0, "rowscaled": 2.0})
        with measured.use_timer(timer):
            y = dawin_fast.interp_linear(x, weight, coeffs, offsets, bias)
            assert sorted(timed) == ["loop", "rowscaled"]
            assert record_strategies == ["loop", "rowscaled", "loop"]  # then the winner
            y2 = dawin_fast.interp_linear(x, weight, coeffs, offsets, bias)
        assert len(timed) == 2 and record_strategies[3:] == ["loop"]
        assert dawin_fast.kernel_choice(x, weight, coeffs) == "torch:loop [measured]"
    ref, scale = interp_linear_reference(x, weight, coeffs, offsets, bias)
    for out in (y, y2):
        assert error_ratio(out, ref, scale) <= 1


def test_cpu_path_keeps_the_model_where_it_is_sure(cache, record_strategies):
    """One row per group (row-scaled by far) and one big group (loop by far): no timing."""
    timer, timed = spy_timer({"loop": 1.0, "rowscaled": 2.0})
    with dawin_fast.use_backend("torch"), measured.use_timer(timer):
        for rows, groups, expected in ((1, 40, "rowscaled"), (1000, 1, "loop")):
            x, weight, coeffs, offsets, bias = layer(rows, groups)
            dawin_fast.interp_linear(x, weight, coeffs, offsets, bias)
            assert record_strategies[-1] == expected
    assert not timed


def test_measuring_off_is_the_model(record_strategies):
    """The test suite's default (conftest: DAWIN_FAST_MEASURE=0)."""
    assert not measured.enabled()
    x, weight, coeffs, offsets, bias = layer(30, 6)
    with dawin_fast.use_backend("torch"):
        dawin_fast.interp_linear(x, weight, coeffs, offsets, bias)
    assert record_strategies == ["rowscaled"]


# --------------------------------------------------------------------- the CUDA wiring


def test_cuda_calls_time_the_kernel_candidates_once(cache, monkeypatch):
    """The op's CUDA path, with the GPU faked: ``planning.candidates`` is timed through
    ``interp_matmul`` (each into a scratch output, with its config), the winner runs the
    call, the second call reuses it, and inside CUDA-graph capture nothing is timed."""
    launched = []

    def fake_matmul(x, weight, coeffs, offsets, bias=None, *, strategy=None, config=None,
                    out=None, call=None):
        launched.append((strategy, config, out is not None))
        y = torch.zeros(x.shape[0], weight.shape[1]) if out is None else out
        return y

    candidates = [("rowscaled", None), ("combine", None), ("swapab", "pack2x64")]
    monkeypatch.setattr(ops.kernels, "interp_matmul", fake_matmul)
    monkeypatch.setattr(ops.planning, "candidates", lambda call: candidates)
    monkeypatch.setattr(ops, "_compiled_kernels", lambda x: True)
    monkeypatch.setattr(ops, "_use_triton", lambda x: True)
    # The timing alone (the fake kernels return zeros); tests/test_verify.py verifies.
    monkeypatch.setattr(ops.verify, "_enabled", False)
    monkeypatch.setattr(ops, "_gpu_device", lambda x: "Fake GPU sm_89")
    monkeypatch.setattr(ops, "_gpu_key", lambda call: f"key {call.num_rows}")
    capturing = [False]
    monkeypatch.setattr(ops, "_is_capturing", lambda x: capturing[0])
    # The op checks x.is_cuda before measuring: run its body directly.
    seconds = {"rowscaled": 3.0, "combine": 2.0, "swapab:pack2x64": 1.0}

    def timer(run, device):
        before = len(launched)
        run()
        strategy, config, scratch = launched[before]
        assert scratch, "timed runs write a scratch output"
        return seconds[ops._choice_name(strategy, config)]

    x, weight, coeffs, offsets, bias = layer(30, 6)
    with measured.use_timer(timer):
        assert ops._gpu_choice(x, weight, 6, lookup_only=True) == ("rowscaled", None, False)
        capturing[0] = True
        assert ops._gpu_choice(x, weight, 6, coeffs, offsets, bias) == ("rowscaled", None,
                                                                         False)
        assert not launched
        capturing[0] = False
        assert ops._gpu_choice(x, weight, 6, coeffs, offsets, bias) == ("swapab", "pack2x64",
                                                                         True)
        assert [(s, c) for s, c, _ in launched] == candidates
        assert ops._gpu_choice(x, weight, 6, coeffs, offsets, bias) == ("swapab", "pack2x64",
                                                                         True)
        capturing[0] = True  # a cached choice applies inside capture
        assert ops._gpu_choice(x, weight, 6, coeffs, offsets, bias) == ("swapab", "pack2x64",
                                                                         True)
        assert len(launched) == 3
        assert ops._gpu_choice(x, weight, 6, lookup_only=True) == ("swapab", "pack2x64", True)
