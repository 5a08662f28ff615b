"""A call's facts are read once and its plan decided once per key (``kernels.planning``).

The device is faked as an H100 with Gluon (``dispatch.target_for``), the kernel launch
itself skipped (``PlannedLaunch.run``), and the measured dispatch on with a fake timer:
the host side of a CUDA call, counted.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from dawin_fast import measured, ops
from dawin_fast.kernels import dispatch, planned, planning

HOPPER = dispatch.Target(cuda=True, half=True, gluon=True)


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Counts of ``target_for`` and ``planning._decide`` calls on a faked Hopper."""
    counts = {"target_for": 0, "decide": 0}

    def target_for(x, weight):
        counts["target_for"] += 1
        return HOPPER

    real_decide = planning._decide

    def decide(*args):
        counts["decide"] += 1
        return real_decide(*args)

    monkeypatch.setattr(dispatch, "target_for", target_for)
    monkeypatch.setattr(planning, "_decide", decide)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(measured.ENV_MEASURE, "1")
    monkeypatch.setenv(measured.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(ops, "_use_triton", lambda x: True)
    monkeypatch.setattr(ops, "_compiled_kernels", lambda x: True)
    monkeypatch.setattr(ops, "_gpu_device", lambda x: "Fake H100 sm_90")
    monkeypatch.setattr(planned.PlannedLaunch, "run", lambda self: None)
    planning.forget()
    measured.clear(disk=False)
    with measured.use_timer(lambda run, device: 1.0):  # a tie: the model's pick stays
        yield counts
    planning.forget()
    measured.clear(disk=False)


def layer_call():
    x = torch.zeros(64, 128, dtype=torch.float16)
    weight = torch.zeros(2, 256, 128, dtype=torch.float16)
    coeffs = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    return x, weight, coeffs, torch.tensor([0, 30, 64]), None


@pytest.mark.parametrize("strategy", [None, "swapab", "rowscaled"])
def test_the_target_is_read_once_per_call(counted, strategy):
    x, weight, coeffs, offsets, bias = layer_call()
    with ops.use_strategy(strategy), (
            pytest.warns(UserWarning) if strategy == "rowscaled" else contextlib.nullcontext()):
        for _ in range(3):
            before = counted["target_for"]
            ops.interp_linear(x, weight, coeffs, offsets, bias)
            assert counted["target_for"] - before == 1
        before = counted["target_for"]
        ops.kernel_choice(x, weight, coeffs)
        assert counted["target_for"] - before == 1


def test_a_key_planned_before_is_not_decided_again(counted):
    x, weight, coeffs, offsets, bias = layer_call()
    ops.interp_linear(x, weight, coeffs, offsets, bias)  # measures, plans
    decided = counted["decide"]
    assert decided >= 1
    for _ in range(5):
        ops.interp_linear(x, weight, coeffs, offsets, bias)
    ops.kernel_choice(x, weight, coeffs)
    assert counted["decide"] == decided


def test_the_plan_says_what_runs_how_chosen_and_why():
    target = dispatch.Target(cuda=True, half=True, gluon=False)
    call = planning.Call(256 * 50, 256, 2, 3072, 768, torch.bfloat16, False, True, target,
                         False)
    forced = planning.plan(call, "rowscaled")
    assert (forced.asked, forced.strategy, forced.how) == ("rowscaled", "epilogue", "forced")
    assert forced.rerouted == dispatch.ROWSCALED_HAZARD and forced.config
    assert "rowscaled rerouted" in forced.describe()
    model = planning.plan(call)
    assert (model.how, model.rerouted) == ("model", "")
    assert planning.plan(call) is model

