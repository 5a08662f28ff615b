"""The weight-stationary kernels against the float64 reference.

On the CPU the plain-Triton twin runs through the interpreter (fp32, fp16; its bf16 dot is
broken): the same runs, program order, tiles, masks and arithmetic as the Gluon kernel,
which does not run in the interpreter. On a GPU the Gluon kernel runs too. Outputs are
NaN-poisoned, so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dawin_fast import kernels
from dawin_fast.kernel_tools import traffic_model
from dawin_fast.kernels import dispatch
from dawin_fast.kernels.fused_configs import (
    INTERPRETER_SMS,
    WSTAT_CONFIGS,
    wstat_config,
    wstat_fits,
    wstat_run_rows,
    wstat_smem_bytes,
    wstat_twin_config,
)
from dawin_fast.kernels.schedule import SMEM_LIMIT
from dawin_fast.kernels.wstat_gluon import wstat_gluon_matmul, wstat_reason
from dawin_fast.kernels.wstat_twin import wstat_twin_matmul
from tests.reference import assert_close_to_reference
from tests.test_interp_linear import make_inputs, rows_past_int32, segment_lengths

NAMES = [c.name for c in WSTAT_CONFIGS]
IMPLS = [f"twin:{n}" for n in NAMES]
if torch.cuda.is_available():
    IMPLS += [f"gluon:{n}" for n in NAMES]


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _runnable():
    if _device() == "cpu" and not kernels.interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")


def _dtypes(impl):
    if torch.cuda.is_available():
        return [torch.float16, torch.bfloat16] + ([] if impl.startswith("gluon") else
                                                  [torch.float32])
    return [torch.float32, torch.float16]


def run_impl(impl, x, weight, coeffs, offsets, bias, out=None):
    if out is None:
        out = torch.full((x.shape[0], weight.shape[1]), float("nan"), dtype=x.dtype,
                         device=x.device)
    kind, name = impl.split(":")
    if kind == "twin":
        cfg = wstat_twin_config(name, x.dtype, interpreting=kernels.interpreting())
        wstat_twin_matmul(x, weight, coeffs.float(), offsets, bias, out, cfg,
                          ieee=x.dtype == torch.float32)
    else:
        wstat_gluon_matmul(x, weight, coeffs.float(), offsets, bias, out, wstat_config(name))
    return out


def _check(impl, lengths, k_dim, n_dim, num_models, dtype, *, bias=True, seed=0):
    if sum(lengths) == 0 or n_dim == 0 or k_dim == 0:
        return  # interp_matmul handles these before any kernel (test below)
    x, weight, coeffs, offsets, b = make_inputs(lengths, k_dim, n_dim, num_models, dtype,
                                                _device(), bias=bias, seed=seed)
    if impl.startswith("gluon") and wstat_reason(x, weight, wstat_config(impl[6:])):
        return  # never launched there (dispatch checks wstat_reason)
    y = run_impl(impl, x, weight, coeffs, offsets, b)
    assert_close_to_reference(y, x, weight, coeffs, offsets, b)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=6)
@given(data=st.data())
def test_random_shapes_match_reference(impl, data):
    _runnable()
    dtype = data.draw(st.sampled_from(_dtypes(impl)), label="dtype")
    num_models = data.draw(st.integers(1, 9), label="M")
    k_dim = data.draw(st.integers(1, 70), label="K")
    n_dim = data.draw(st.integers(1, 70), label="N")
    lengths = data.draw(st.lists(st.integers(0, 90), min_size=1, max_size=4), label="lengths")
    bias = data.draw(st.booleans(), label="bias")
    _check(impl, lengths, k_dim, n_dim, num_models, dtype, bias=bias,
           seed=data.draw(st.integers(0, 2**31 - 1), label="seed"))


EDGE_CASES = {
    "one row": ([1], 32, 17, 2),
    "fewer rows than a row block": ([5], 24, 20, 2),
    "one long group, several runs of several row blocks": ([150], 33, 40, 2),
    "empty groups at both ends and between": ([0, 0, 47, 0, 29, 0], 32, 40, 3),
    "odd tails in K and N": ([61, 18], 71, 67, 2),
    "one model": ([30, 12], 21, 45, 1),
    "32 models": ([40, 7], 37, 29, 32),
    "K = 1": ([9, 4], 1, 13, 2),
    "N = 1": ([9, 4], 13, 1, 2),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases(impl, case):
    _runnable()
    lengths, k_dim, n_dim, num_models = EDGE_CASES[case]
    for i, dtype in enumerate(_dtypes(impl)):
        _check(impl, lengths, k_dim, n_dim, num_models, dtype, bias=i % 2 == 0)


@pytest.mark.parametrize("pattern", ["identical", "zipf", "skewed"])
def test_segment_distributions(pattern):
    _runnable()
    lengths = segment_lengths(pattern, num_groups=5, num_rows=160)
    _check("twin:ws128", lengths, 40, 40, 3, torch.float16)


def test_runs_span_row_blocks_and_groups_span_runs():
    """The interpreter's run rule gives the twin's test shapes runs of several row blocks,
    and cuts long groups into several runs (so the tests above exercise both)."""
    cfg = wstat_twin_config("ws128", torch.float32, interpreting=True)
    run = wstat_run_rows(150, 1, 40, cfg, INTERPRETER_SMS)
    assert run >= 2 * cfg.block_t and run < 150
    assert wstat_run_rows(12800, 1, 3072, wstat_config("ws128")) == 2560  # 5 runs x 24 tiles


def test_strided_inputs_and_output():
    _runnable()
    x, weight, coeffs, offsets, b = make_inputs([7, 0, 30], 24, 20, 3, torch.float32,
                                                _device())
    x_strided = torch.cat([x, x], dim=1)[:, ::2]
    x_strided.copy_(x)
    weight_t = weight.transpose(1, 2).contiguous().transpose(1, 2)
    out = torch.full((20, 37), float("nan"), device=x.device).t()
    run_impl("twin:ws64", x_strided, weight_t, coeffs, offsets, b, out=out)
    assert_close_to_reference(out, x, weight, coeffs, offsets, b)


def test_int64_addressing():
    """x and y rows 2**30 elements apart: row 2 starts past 2**31 elements."""
    _runnable()
    x, out, (x_small, weight, coeffs, offsets, b) = rows_past_int32(_device())
    run_impl("twin:ws128", x, weight, coeffs, offsets, b, out=out)
    assert_close_to_reference(out, x_small, weight, coeffs, offsets, b)


@pytest.mark.parametrize("lengths", [[0], [0, 0], [12, 0, 30, 5], [64]])
def test_strategy_through_interp_matmul(lengths):
    """use_strategy's path: T = 0 and empty groups included (the launcher returns before
    any kernel when T = 0)."""
    _runnable()
    x, weight, coeffs, offsets, b = make_inputs(lengths, 40, 24, 3, torch.float16, _device())
    out = torch.full((x.shape[0], 24), float("nan"), dtype=x.dtype, device=x.device)
    y = kernels.interp_matmul(x, weight, coeffs.float(), offsets, b, strategy="wstat", out=out)
    assert y.shape == (sum(lengths), 24)
    if sum(lengths):
        assert_close_to_reference(y, x, weight, coeffs, offsets, b)


def test_wstat_falls_back_to_the_twin_where_gluon_cannot_run(monkeypatch):
    _runnable()

    def no_gluon(*args, **kwargs):
        raise AssertionError("the Gluon kernel must not run here")

    monkeypatch.setattr(dispatch, "wstat_gluon_matmul", no_gluon)
    x, weight, coeffs, offsets, b = make_inputs([33, 3], 24, 16, 2, torch.float16, _device())
    out = torch.full((36, 16), float("nan"), dtype=x.dtype, device=x.device)
    kernels.interp_matmul(x, weight, coeffs.float(), offsets, b, strategy="wstat", out=out)
    assert_close_to_reference(out, x, weight, coeffs, offsets, b)


def test_gluon_target_routes_large_groups_to_the_wstat_launcher(monkeypatch):
    """A faked Hopper: a one-group call the model gives to "wstat" reaches the Gluon
    launcher with the model's config (the stand-in computes it with the twin)."""
    if not kernels.interpreting():
        pytest.skip("CPU tensors need the interpreter")
    hopper = dispatch.Target(cuda=True, half=True, gluon=True)
    calls = []

    def fake_gluon(x, weight, coeffs, offsets, bias, y, cfg):
        calls.append(cfg.name)
        small = wstat_twin_config(cfg.name, x.dtype, interpreting=True)
        return wstat_twin_matmul(x, weight, coeffs, offsets, bias, y, small)

    monkeypatch.setattr(dispatch, "target_for", lambda x, w: hopper)
    monkeypatch.setattr(dispatch, "wstat_gluon_matmul", fake_gluon)
    expected = dispatch.choose(12800, 1, 2, 3072, 768, hopper)
    assert (expected.strategy, expected.config) == ("wstat", "ws128")
    x, weight, coeffs, offsets, b = make_inputs([90], 48, 40, 2, torch.float16, "cpu")
    y = torch.full((90, 40), float("nan"), dtype=x.dtype)
    dispatch.launch("wstat", x, weight, coeffs.float(), offsets, b, y, config="ws128")
    assert calls == ["ws128"]
    assert_close_to_reference(y, x, weight, coeffs, offsets, b)


# ------------------------------------------------------- shared memory and the model


def test_never_chosen_where_the_resident_tile_does_not_fit():
    hopper = dispatch.Target(cuda=True, half=True, gluon=True)
    for k_dim in (1344, 2048, 3072, 4096):
        assert not any(wstat_fits(c, k_dim) for c in WSTAT_CONFIGS)
        for num_models in (1, 2, 8, 32):
            for rows, groups in ((16448, 1), (12800, 3), (100000, 1)):
                choice = dispatch.choose(rows, groups, num_models, 768, k_dim, hopper)
                assert choice.strategy != "wstat", (k_dim, num_models, rows)
    for cfg in WSTAT_CONFIGS:
        k_max = max(k for k in range(64, 4097, 64) if wstat_fits(cfg, k))
        assert wstat_smem_bytes(cfg, k_max) <= SMEM_LIMIT
        assert wstat_smem_bytes(cfg, k_max + 64) > SMEM_LIMIT - 1024
    assert wstat_fits(wstat_config("ws128"), 768) and not wstat_fits(wstat_config("ws128"), 832)
    assert wstat_fits(wstat_config("ws64"), 1024)


def test_gluon_refuses_what_it_cannot_run():
    x, weight, *_ = make_inputs([4], 3072, 8, 2, torch.float16, "cpu")
    assert "shared memory" in wstat_reason(x, weight, wstat_config("ws128"))
    x, weight, *_ = make_inputs([4], 64, 8, 2, torch.float32, "cpu")
    assert "dtype" in wstat_reason(x, weight, wstat_config("ws128"))


def test_model_puts_k768_layers_within_p1_and_p4_on_the_h200():
    """The prediction of kernels/README.md (model, not measured): ViT-B fc1 and QKV
    at <= 1.15x cuBLAS for M = 2 and <= 1.5x for M = 8."""
    for case in traffic_model.large_group_cases():
        if case.k_dim != 768:
            continue
        base = traffic_model.cublas(case, hw=traffic_model.H200).seconds
        ratio = traffic_model.wstat(case, wstat_config("ws128"), traffic_model.H200).seconds / base
        assert ratio <= (1.15 if case.num_models == 2 else 1.5), (case.name, ratio)


# ------------------------------------------------------------------ GPU: production shapes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Gluon kernel needs a Hopper GPU")
@pytest.mark.parametrize("num_models", [2, 8])
@pytest.mark.parametrize("rows, n_dim, k_dim, name", [(3200, 3072, 768, "ws128"),
                                                      (12800, 2304, 768, "ws128"),
                                                      (4112, 4096, 1024, "ws64")])
def test_gluon_production_shapes(rows, n_dim, k_dim, name, num_models):
    """Many K slices and row blocks per program (the interpreter shapes have few): error
    against fp32 F.linear on the merged weight within a bound that one wrong K slice or
    one stale x tile would exceed, and bitwise-identical outputs over 3 launches."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("sm_90 only")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, k_dim, device="cuda", generator=gen).to(torch.bfloat16)
    weight = (torch.randn(num_models, n_dim, k_dim, device="cuda", generator=gen)
              / k_dim ** 0.5).to(torch.bfloat16)
    coeffs = torch.rand(1, num_models, device="cuda", generator=gen)
    offsets = torch.tensor([0, rows], device="cuda")
    merged = torch.einsum("m,mnk->nk", coeffs[0], weight.float())
    expected = torch.nn.functional.linear(x.float(), merged)
    outs = [run_impl(f"gluon:{name}", x, weight, coeffs, offsets, None) for _ in range(3)]
    err = (outs[0].float() - expected).abs().max().item()
    scale = expected.abs().max().item()
    # bf16 output rounding (half an ulp: <= 2**-9 of the largest |y|) plus the bf16 cast of
    # W_c: well under 1% of max |y|; a K slice of 64 missing or doubled moves y by
    # ~sqrt(64 / K) of its std, ~5% of max |y| on average and far more at the worst row.
    assert err < 0.01 * scale, (err, scale)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
