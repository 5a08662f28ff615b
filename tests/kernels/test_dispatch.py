"""Routing of interp_matmul calls to the modeled strategies' kernels, checked on the CPU.

The Gluon kernel only runs on a Hopper GPU; here the device is faked (``Target``, a
recording stand-in for the Gluon launcher) to check which kernel and config a call gets,
and that wherever Gluon cannot run the "swapab" strategy runs its twin, correctly.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from dawin_fast import kernels
from dawin_fast.kernel_tools import compile_gate
from dawin_fast.kernels import cost_model, dispatch
from dawin_fast.kernels.fused_configs import (
    EPILOGUE_CONFIGS,
    SWAPAB_CONFIGS,
    WSTAT_CONFIGS,
    epilogue_config,
    twin_config,
    wstat_twin_config,
)
from tests.reference import assert_close_to_reference
from tests.test_interp_linear import make_inputs

interp_matmul_module = importlib.import_module("dawin_fast.kernels.interp_matmul")

HOPPER = dispatch.Target(cuda=True, half=True, gluon=True)
B32_FC1 = dict(n_dim=3072, k_dim=768)


def test_model_picks_wstat_for_large_groups_swapab_for_groups_and_epilogue_for_rows():
    one = dispatch.choose(12800, 1, 2, **B32_FC1, target=HOPPER)
    per_sample = dispatch.choose(256 * 50, 256, 2, **B32_FC1, target=HOPPER)
    per_row = dispatch.choose(12800, 12800, 2, **B32_FC1, target=HOPPER)
    assert (one.strategy, one.config) == ("wstat", "ws128")
    fc2 = dispatch.choose(12800, 1, 2, 768, 3072, target=HOPPER)  # no resident tile fits
    assert (fc2.strategy, fc2.config) == ("swapab", "w8t256")
    assert (per_sample.strategy, per_sample.config) == ("swapab", "w8pack4x64")
    assert per_row.strategy == "epilogue"
    small = dispatch.choose(400, 1, 2, **B32_FC1, target=HOPPER)
    assert (small.strategy, small.config) == ("swapab", "big128")  # more programs on 132 SMs


@pytest.mark.parametrize("target, per_sample", [
    (dispatch.Target(cuda=False, half=True, gluon=False), "rowscaled"),  # interpreter / CPU
    # fp32 on Hopper (TF32 wgmma: rowscaled's hazard, so epilogue) and off it
    (dispatch.Target(cuda=True, half=False, gluon=False), "epilogue"),
    (dispatch.Target(cuda=True, half=False, gluon=False, hopper=False), "rowscaled"),
    # sm_90 without Gluon or TMA, and no sm_90 at all
    (dispatch.Target(cuda=True, half=True, gluon=False), "epilogue"),
    (dispatch.Target(cuda=True, half=True, gluon=False, hopper=False), "rowscaled"),
])
def test_no_modeled_default_where_gluon_cannot_run(target, per_sample):
    assert dispatch.choose(12800, 1, 2, **B32_FC1, target=target) is None
    assert kernels.default_strategy(12800, 1, 2, 3072, 768, target) == "combine"
    assert kernels.default_strategy(256 * 50, 256, 2, 3072, 768, target) == per_sample


def test_choice_is_the_cheapest_prediction():
    for rows, groups, models in ((12800, 1, 2), (12800, 256, 8), (4096, 4096, 32)):
        choice = dispatch.choose(rows, groups, models, **B32_FC1, target=HOPPER)
        case = cost_model.Case("", (rows // groups,), models, 3072, 768, repeat=groups)
        costs = [cost_model.swapab(case, c).seconds for c in SWAPAB_CONFIGS]
        costs += [cost_model.epilogue(case, c).seconds for c in EPILOGUE_CONFIGS]
        costs += [cost_model.wstat(case, c).seconds for c in WSTAT_CONFIGS]  # K=768 fits
        assert choice.predicted_s == min(costs)


def test_every_routable_config_is_in_the_compile_gate():
    """M = 1 ... 32 and every grouping only ever reach kernels and configs the compile gate
    compiles: the default rule's picks on a Hopper (Gluon or epilogue), and what
    ``dispatch.launch`` runs for an explicit strategy where Gluon cannot run (the twin, with
    its fp32 tiles) or for fp32 (the epilogue kernel's fp32 configs), fp16/bf16 and fp32."""
    variants = list(compile_gate.discover())
    gated = {(v.kernel, v.config) for v in variants}
    fp32_gated = {(v.kernel, v.config) for v in variants if v.case.startswith("float32")}
    for num_models in range(1, 33):
        for rows, groups in ((12800, 1), (400, 1), (12800, 256), (12800, 12800), (5000, 700)):
            for n_dim, k_dim in ((3072, 768), (768, 3072), (4096, 1024)):
                choice = dispatch.choose(rows, groups, num_models, n_dim, k_dim, HOPPER)
                kernel = {"swapab": "swapab (Gluon)", "wstat": "wstat (Gluon)"}.get(
                    choice.strategy, "epilogue")
                assert (kernel, choice.config) in gated, choice
                shape = (rows, groups, num_models, n_dim, k_dim)
                swapab = dispatch.best_config("swapab", *shape)
                epilogue = dispatch.best_config("epilogue", *shape)
                wstat = dispatch.best_config("wstat", *shape)
                for dtype in (torch.bfloat16, torch.float16):
                    assert ("swapab twin", twin_config(swapab, dtype).name) in gated
                    assert ("epilogue", epilogue_config(epilogue, dtype, False).name) in gated
                    assert ("wstat twin", wstat_twin_config(wstat, dtype).name) in gated
                assert ("swapab twin", twin_config(swapab, torch.float32).name) in fp32_gated
                assert ("wstat twin", wstat_twin_config(wstat, torch.float32).name) \
                    in fp32_gated
                for ieee in (True, False):
                    cfg = epilogue_config(epilogue, torch.float32, ieee)
                    assert ("epilogue", cfg.name) in fp32_gated


def test_uniform_packing_closed_form_matches_the_schedule():
    for length, repeat in ((50, 256), (197, 64), (1, 40), (64, 10), (300, 3)):
        for cfg in SWAPAB_CONFIGS:
            closed = cost_model.pack_slots(
                cost_model.Case("", (length,), 2, 64, 64, repeat=repeat), cfg.slot_t,
                cfg.slots)
            exact = cost_model.pack_slots(
                cost_model.Case("", (length,) * repeat + (0,), 2, 64, 64), cfg.slot_t,
                cfg.slots)
            assert closed[0] == exact[0]
            # The last tile of the exact list may be partial; the closed form averages the
            # repeating pattern.
            assert abs(closed[1] - exact[1]) <= 0.25 * exact[1], (length, repeat, cfg.name)


# ------------------------------------------------------------ routing, end to end


def _call(x, weight, coeffs, offsets, b, strategy=None):
    out = torch.full((x.shape[0], weight.shape[1]), float("nan"), dtype=x.dtype)
    kernels.interp_matmul(x, weight, coeffs.float(), offsets, b, strategy=strategy, out=out)
    return out


@pytest.mark.parametrize("strategy", ["swapab", "epilogue", "wstat"])
@pytest.mark.parametrize("lengths", [[12, 0, 30, 5], [64]])
def test_modeled_strategies_through_interp_matmul(strategy, lengths):
    if not kernels.interpreting():
        pytest.skip("CPU tensors need the interpreter")
    for dtype in (torch.float32, torch.float16):
        x, weight, coeffs, offsets, b = make_inputs(lengths, 40, 24, 3, dtype, "cpu")
        y = _call(x, weight, coeffs, offsets, b, strategy)
        assert_close_to_reference(y, x, weight, coeffs, offsets, b)


def test_interpreter_default_is_unchanged():
    x, weight, coeffs, offsets, _ = make_inputs([50] * 4, 16, 16, 2, torch.float16, "cpu")
    target = dispatch.target_for(x, weight)
    assert not target.gluon
    assert kernels.default_strategy(200, 4, 2, 16, 16, target) == "rowscaled"


def test_gluon_target_routes_default_calls_to_the_gluon_launcher(monkeypatch):
    """A faked Hopper: the default strategy reaches the Gluon launcher with the model's
    config; the stand-in computes the result with the twin so the output is checked too."""
    if not kernels.interpreting():
        pytest.skip("CPU tensors need the interpreter")
    calls = []

    def fake_gluon(x, weight, coeffs, offsets, bias, y, cfg):
        calls.append(cfg.name)
        small = dispatch.swapab_config(cfg.name, interpreting=True)
        return dispatch.swapab_twin_matmul(x, weight, coeffs, offsets, bias, y, small)

    monkeypatch.setattr(dispatch, "target_for", lambda x, w: HOPPER)
    monkeypatch.setattr(dispatch, "swapab_gluon_matmul", fake_gluon)
    lengths = [50] * 6  # K = 128, N = 512: a shape the model gives to swap-AB
    x, weight, coeffs, offsets, b = make_inputs(lengths, 128, 512, 2, torch.float16, "cpu")
    y = _call(x, weight, coeffs, offsets, b)
    expected = dispatch.choose(300, 6, 2, 512, 128, HOPPER)
    assert expected.strategy == "swapab" and calls == [expected.config]
    assert_close_to_reference(y, x, weight, coeffs, offsets, b)


def test_swapab_falls_back_to_the_twin_where_gluon_cannot_run(monkeypatch):
    if not kernels.interpreting():
        pytest.skip("CPU tensors need the interpreter")

    def no_gluon(*args, **kwargs):
        raise AssertionError("the Gluon kernel must not run here")

    monkeypatch.setattr(dispatch, "swapab_gluon_matmul", no_gluon)
    x, weight, coeffs, offsets, b = make_inputs([9, 3], 24, 16, 2, torch.float16, "cpu")
    y = _call(x, weight, coeffs, offsets, b, "swapab")
    assert_close_to_reference(y, x, weight, coeffs, offsets, b)


def test_target_on_cpu_tensors_has_no_gluon():
    x, weight, *_ = make_inputs([4], 16, 8, 2, torch.float16, "cpu")
    target = dispatch.target_for(x, weight)
    assert not target.cuda and not target.gluon and target.half
    assert kernels.STRATEGIES[-3:] == ("swapab", "epilogue", "wstat")


# ----------------------------------------- rowscaled on Hopper (its register-A hazard)

HOPPER_NO_GLUON = dispatch.Target(cuda=True, half=True, gluon=False, hopper=True)


def test_default_rule_never_picks_rowscaled_on_hopper():
    """Its register-A wgmma loop has the hazard there (compiled.md, a_hazard): every shape,
    M and dtype, with or without Gluon, gets a kernel that passes the check."""
    for target in (HOPPER, HOPPER_NO_GLUON):
        for num_models in (1, 2, 8, 32, 100):
            for rows, groups in ((12800, 1), (400, 1), (12800, 256), (12800, 12800), (64, 64)):
                for dtype, ieee in ((torch.bfloat16, False), (torch.float16, False),
                                    (torch.float32, False)):
                    got = kernels.choose_strategy(rows, groups, num_models, dtype, ieee, True,
                                                  3072, 768, target)
                    assert got != "rowscaled", (target, num_models, rows, groups, dtype)
    assert kernels.default_strategy(256 * 50, 256, 2, 3072, 768, HOPPER_NO_GLUON) == "epilogue"
    # fp32 IEEE runs on CUDA cores (no wgmma): rowscaled stays allowed there.
    assert dispatch.served_by("rowscaled", HOPPER_NO_GLUON, torch.float32, True) == "rowscaled"
    # Off Hopper (sm_80/sm_89: mma.sync, synchronous) nothing changes.
    off = dispatch.Target(cuda=True, half=True, gluon=False, hopper=False)
    assert dispatch.served_by("rowscaled", off, torch.bfloat16, False) == "rowscaled"


def test_forced_rowscaled_on_hopper_runs_epilogue_and_says_so(monkeypatch):
    """A faked Hopper: ``strategy="rowscaled"`` reaches the epilogue kernel (with a warning
    naming the hazard), the result is checked against the float64 reference, and
    ``ops.kernel_choice`` under ``use_strategy("rowscaled")`` reports the reroute."""
    if not kernels.interpreting():
        pytest.skip("CPU tensors need the interpreter")
    from dawin_fast import ops

    ran = []
    real_launch = dispatch.launch

    def recording_launch(strategy, *args, **kwargs):
        ran.append(strategy)
        return real_launch(strategy, *args, **kwargs)

    monkeypatch.setattr(dispatch, "target_for", lambda x, w: HOPPER_NO_GLUON)
    monkeypatch.setattr(dispatch, "launch", recording_launch)
    x, weight, coeffs, offsets, b = make_inputs([7, 0, 20, 3], 40, 24, 3, torch.float16, "cpu")
    with pytest.warns(UserWarning, match="triton-lang/triton#9433"):
        y = _call(x, weight, coeffs, offsets, b, "rowscaled")
    assert ran == ["epilogue"]
    assert_close_to_reference(y, x, weight, coeffs, offsets, b)
    with ops.use_backend("triton"), ops.use_strategy("rowscaled"):
        choice = ops.kernel_choice(x, weight, coeffs)
    assert choice.startswith("epilogue") and "rowscaled rerouted" in choice


@pytest.mark.parametrize("hopper", [True, False])
def test_measured_candidates_never_time_rowscaled_on_hopper(monkeypatch, hopper):
    """The measured dispatch times ``kernels.candidates``: on Hopper (compiled) "rowscaled"
    is not among them for any dtype that takes wgmma; off Hopper it is, where it fits."""
    target = dispatch.Target(cuda=True, half=True, gluon=False, hopper=hopper)
    monkeypatch.setattr(dispatch, "target_for", lambda x, w: target)
    weight = torch.zeros(2, 3072, 768, dtype=torch.bfloat16)
    for rows, groups in ((12800, 256), (64, 64), (12800, 1)):
        x = torch.zeros(rows, 768, dtype=torch.bfloat16)
        found = [s for s, _ in kernels.candidates(x, weight, groups)]
        assert ("rowscaled" in found) == (not hopper), (rows, groups, found)
        assert found, "something is always timed"
