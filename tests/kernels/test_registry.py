"""A strategy registered in a few lines is planned, described, gated and timed.

The toy below is the whole of a new strategy: no other file names it, yet the cost model
ranks it (so the planner picks it where it is cheapest), ``kernel_choice`` describes it,
the compile gate lists its variants and the measured dispatch times its configs.
"""

from __future__ import annotations

import pytest
import torch

from dawin_fast import measured, ops
from dawin_fast.kernel_tools import compile_gate
from dawin_fast.kernels import dispatch, gate_spec, planned, planning, registry

HOPPER = dispatch.Target(cuda=True, half=True, gluon=True)


@pytest.fixture
def toy(monkeypatch, tmp_path):
    launched: list[str] = []

    def launch(plan, x, weight, coeffs, offsets, bias, y):
        launched.append(plan.config)
        return y.zero_()

    def variants():
        yield gate_spec.Variant(kernel="toy", case="one call", fn=None, args=(), kwargs={})

    registry.register(registry.Strategy(
        name="toy", summary="a strategy of the test", launch=launch, configs=("t1", "t2"),
        predict=lambda case, config: {"t1": 1e-9, "t2": 1.2e-9}[config],
        implementation=lambda plan: "toy kernel", compile_variants=(variants,)))
    monkeypatch.setattr(dispatch, "target_for", lambda x, w: HOPPER)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(measured.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(ops, "_use_triton", lambda x: True)
    monkeypatch.setattr(planned.PlannedLaunch, "run", lambda self: None)
    measured.clear(disk=False)
    yield launched
    registry.unregister("toy")
    measured.clear(disk=False)


def layer():
    x = torch.zeros(64, 128, dtype=torch.float16)
    weight = torch.zeros(2, 256, 128, dtype=torch.float16)
    return x, weight, torch.tensor([[0.5, 0.5]]), torch.tensor([0, 64])


def test_a_toy_strategy_is_planned_described_gated_and_timed(toy, monkeypatch):
    x, weight, coeffs, offsets = layer()
    call = planning.facts(x, weight, 1)
    assert (planning.plan(call).strategy, planning.plan(call).config) == ("toy", "t1")
    assert ops.kernel_choice(x, weight, coeffs) == "toy:t1 (toy kernel) [model]"
    ops.interp_linear(x, weight, coeffs, offsets)
    assert toy == ["t1"]
    assert [v.case for v in compile_gate.discover("toy")] == ["one call"]
    assert {("toy", "t1"), ("toy", "t2")} <= set(planning.candidates(call))
    # measured: both configs are timed, the faster (t2 here) kept
    monkeypatch.setenv(measured.ENV_MEASURE, "1")
    monkeypatch.setattr(ops, "_compiled_kernels", lambda x: True)
    monkeypatch.setattr(ops, "_gpu_device", lambda x: "Fake H100 sm_90")
    timed = []

    def timer(run, device):
        before = len(toy)
        run()
        timed.append(toy[before] if len(toy) > before else None)
        return 1.0 if timed[-1] != "t2" else 0.5
    with measured.use_timer(timer):
        ops.interp_linear(x, weight, coeffs, offsets)
    assert {"t1", "t2"} <= set(timed)
    assert toy[-1] == "t2"
    assert ops.kernel_choice(x, weight, coeffs) == "toy:t2 (toy kernel) [measured]"
    with ops.use_strategy("toy"):
        assert ops.kernel_choice(x, weight, coeffs) == "toy:t1 (toy kernel) [forced]"


def test_without_the_toy_nothing_names_it():
    assert "toy" not in registry.names()
    x, weight, *_ = layer()
    assert not any("toy" in s for s, _ in planning.candidates(planning.facts(x, weight, 1)))
