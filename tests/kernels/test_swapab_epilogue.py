"""The swap-AB kernels (the Gluon kernel and its twin: tiling, slots and schedule) and the
epilogue-scaled multi-GEMM against the float64 reference.

Outputs are NaN-poisoned, so an element a kernel forgets to write fails. On the CPU the
kernels run through the Triton interpreter (fp32, fp16; its bf16 dot is broken); on a GPU
they are compiled, bf16 included, and the Gluon kernel itself is checked too.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dawin_fast.kernels import interpreting
from dawin_fast.kernels.epilogue_scaled import epilogue_scaled_matmul, tma_reason
from dawin_fast.kernels.fused_configs import (
    EPILOGUE_CONFIGS,
    INTERPRETER_EPILOGUE,
    SWAPAB_CONFIGS,
    swapab_config,
)
from dawin_fast.kernels.schedule import num_slots_upper, padded_rows, slot_schedule
from dawin_fast.kernels.swapab_gluon import swapab_gluon_matmul, tma_compatible
from dawin_fast.kernels.swapab_twin import swapab_twin_matmul
from tests.reference import assert_close_to_reference, offsets_from_lengths
from tests.test_interp_linear import make_inputs, rows_past_int32, segment_lengths

SLOT_CONFIGS = [c.name for c in SWAPAB_CONFIGS]
IMPLS = [f"twin:{name}" for name in SLOT_CONFIGS] + ["epilogue:auto", "epilogue:pointers"]
if torch.cuda.is_available():
    IMPLS += [f"gluon:{name}" for name in SLOT_CONFIGS]
# The named cases run on one config per slot width class (1, 2 and 8 slots per program);
# the random shapes cover every config. The interpreter is slow.
CORE_IMPLS = [i for i in IMPLS if not i.endswith(("w8t256", "w8pack4x64", "pack4x32"))]


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _runnable(device):
    if device == "cpu" and not interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")


def dtypes_for(impl):
    if torch.cuda.is_available():
        return [torch.float16, torch.bfloat16] + ([] if impl.startswith("gluon") else
                                                  [torch.float32])
    return [torch.float32, torch.float16]  # the interpreter's bf16 dot is broken


def run_impl(impl, x, weight, coeffs, offsets, bias, out=None):
    """One implementation into a NaN-poisoned output (or ``out``)."""
    if out is None:
        out = torch.full((x.shape[0], weight.shape[1]), float("nan"), dtype=x.dtype,
                         device=x.device)
    kind, name = impl.split(":")
    ieee = x.dtype == torch.float32
    coeffs = coeffs.float()
    if kind == "twin":
        cfg = swapab_config(name, interpreting=interpreting())
        swapab_twin_matmul(x, weight, coeffs, offsets, bias, out, cfg, ieee=ieee)
    elif kind == "gluon":
        cfg = swapab_config(name)
        swapab_gluon_matmul(x, weight, coeffs, offsets, bias, out, cfg)
    else:
        cfg = INTERPRETER_EPILOGUE if interpreting() else EPILOGUE_CONFIGS[0]
        epilogue_scaled_matmul(x, weight, coeffs, offsets, bias, out, cfg,
                               use_tma=None if name == "auto" else False, ieee=ieee)
    return out


def _check(impl, lengths, k_dim, n_dim, num_models, dtype, *, bias=True, seed=0):
    device = _device()
    if impl.startswith("gluon") and (k_dim * 2) % 16:
        return  # TMA-incompatible shapes never reach the Gluon kernel (tma_compatible)
    if sum(lengths) == 0 or n_dim == 0 or k_dim == 0:
        return  # the launcher (interp_matmul) handles these before any kernel
    x, weight, coeffs, offsets, b = make_inputs(lengths, k_dim, n_dim, num_models, dtype,
                                                device, bias=bias, seed=seed)
    y = run_impl(impl, x, weight, coeffs, offsets, b)
    assert_close_to_reference(y, x, weight, coeffs, offsets, b)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=10)
@given(data=st.data())
def test_random_shapes_match_reference(impl, data):
    _runnable(_device())
    dtype = data.draw(st.sampled_from(dtypes_for(impl)), label="dtype")
    num_models = data.draw(st.integers(1, 12), label="M")  # 32: an edge case (slow here)
    k_dim = data.draw(st.integers(1, 70), label="K")
    n_dim = data.draw(st.integers(1, 70), label="N")
    lengths = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=8), label="lengths")
    bias = data.draw(st.booleans(), label="bias")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    _check(impl, lengths, k_dim, n_dim, num_models, dtype, bias=bias, seed=seed)


@pytest.mark.parametrize("impl", CORE_IMPLS)
@pytest.mark.parametrize("pattern", ["identical", "distinct", "uniform", "zipf", "skewed"])
def test_segment_distributions(impl, pattern):
    _runnable(_device())
    lengths = segment_lengths(pattern, num_groups=7, num_rows=150)
    for dtype in dtypes_for(impl):
        _check(impl, lengths, 48, 40, 3, dtype)


EDGE_CASES = {
    "one row": ([1], 32, 17, 2),
    "fewer rows than a slot": ([5], 24, 20, 2),
    "every row its own group": ([1] * 23, 24, 18, 2),
    "groups of exactly one slot": ([8, 8, 16, 32], 16, 33, 2),
    "prime group count": ([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9], 19, 23, 3),
    "empty groups at both ends": ([0, 0, 17, 0, 9, 0], 32, 32, 2),
    "empty groups only around one row": ([0, 1, 0], 16, 16, 2),
    "one model": ([30, 12], 21, 45, 1),
    "32 models": ([20, 7], 37, 29, 32),
    "K = 1": ([9, 4], 1, 13, 2),
    "N = 1": ([9, 4], 13, 1, 2),
    "K, N not multiples of any tile": ([33, 18], 71, 67, 2),
    "long group": ([100], 48, 35, 2),
}


@pytest.mark.parametrize("impl", CORE_IMPLS)
@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases(impl, case):
    _runnable(_device())
    lengths, k_dim, n_dim, num_models = EDGE_CASES[case]
    for i, dtype in enumerate(dtypes_for(impl)):
        _check(impl, lengths, k_dim, n_dim, num_models, dtype, bias=i % 2 == 0)


# Group de-duplication (``NCOMB``): a slot continuing the previous slot's group reuses its
# combined weight tile; a slot of a new group combines its own. Lengths whose schedule has
# both kinds of neighbours in one tile (asserted below, so the test cannot pass vacuously).
DEDUP_CASES = {
    "long groups over several slots, then short ones": [20, 3, 30, 5, 0, 17, 1],
    "one long group, then one row per group": [40, 1, 1, 1, 1, 1],
}


@pytest.mark.parametrize("impl", ["twin:pack4x32", "twin:pack2x64", "gluon:pack4x32"])
@pytest.mark.parametrize("case", DEDUP_CASES)
def test_group_deduplication_across_slots(impl, case):
    if impl.startswith("gluon") and not torch.cuda.is_available():
        pytest.skip("the Gluon kernel needs a GPU")
    _runnable(_device())
    lengths = DEDUP_CASES[case]
    cfg = swapab_config(impl.split(":")[1], interpreting=interpreting())
    offsets = offsets_from_lengths(lengths, torch.int64, "cpu")
    groups = slot_schedule(offsets, sum(lengths), cfg.slot_t, cfg.slots).slot_group
    groups = groups.view(-1, cfg.slots)
    same = (groups[:, 1:] == groups[:, :-1]) & (groups[:, 1:] >= 0)
    new = (groups[:, 1:] != groups[:, :-1]) & (groups[:, 1:] >= 0)
    assert same.any() and new.any(), groups  # both branches of the de-duplication run
    for dtype in dtypes_for(impl):
        _check(impl, lengths, 40, 36, 3, dtype)
    _check(impl, [sum(lengths)], 40, 36, 3, dtypes_for(impl)[-1])  # NCOMB = 1: one group


@pytest.mark.parametrize("impl", ["twin:pack4x32", "epilogue:auto", "epilogue:pointers"])
def test_strided_inputs(impl):
    """Non-contiguous x, transposed weight storage, strided output all honour strides."""
    device = _device()
    _runnable(device)
    x, weight, coeffs, offsets, b = make_inputs([7, 0, 12], 24, 20, 3, torch.float32, device)
    x_strided = torch.cat([x, x], dim=1)[:, ::2]
    x_strided.copy_(x)
    weight_t = weight.transpose(1, 2).contiguous().transpose(1, 2)
    out = torch.full((20, 19), float("nan"), device=device).t()
    run_impl(impl, x_strided, weight_t, coeffs, offsets, b, out=out)
    assert_close_to_reference(out, x, weight, coeffs, offsets, b)


@pytest.mark.parametrize("impl", ["twin:w8pack4x64", "twin:big128", "epilogue:auto",
                                  "epilogue:pointers"])
def test_int64_addressing(impl):
    """x and y rows 2**30 elements apart: row 2 starts past 2**31 elements."""
    device = _device()
    _runnable(device)
    x, out, (x_small, weight, coeffs, offsets, b) = rows_past_int32(device)
    run_impl(impl, x, weight, coeffs, offsets, b, out=out)
    assert_close_to_reference(out, x_small, weight, coeffs, offsets, b)


def test_epilogue_tma_and_pointer_paths_both_run():
    """An aligned problem takes tensor descriptors; K = 9 cannot, and is refused if forced."""
    x, weight, coeffs, offsets, b = make_inputs([5, 6], 16, 8, 2, torch.float16, "cpu")
    assert tma_reason(x, weight) is None
    x9, w9, *_ = make_inputs([5, 6], 9, 8, 2, torch.float16, "cpu")
    assert "x rows" in tma_reason(x9, w9)
    y = torch.empty(11, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="TMA requested"):
        epilogue_scaled_matmul(x9, w9, coeffs, offsets, None, y, INTERPRETER_EPILOGUE,
                               use_tma=True)


def test_gluon_needs_tma_friendly_inputs():
    x, weight, *_ = make_inputs([4], 16, 8, 2, torch.float16, "cpu")
    assert tma_compatible(x, weight) is None
    assert "dtype" in tma_compatible(x.float(), weight.float())
    assert tma_compatible(x[:, :9], weight[:, :, :9]) is None  # strides stay 16-byte aligned
    x9, w9, *_ = make_inputs([4], 9, 8, 2, torch.float16, "cpu")
    assert "x rows" in tma_compatible(x9, w9)
    assert "stacked" in tma_compatible(x, weight[:, :4])


# ------------------------------------------------------------------------- schedule


@settings(max_examples=60)
@given(lengths=st.lists(st.integers(0, 70), min_size=1, max_size=12),
       slot_t=st.sampled_from([8, 16, 32, 64]), slots=st.sampled_from([1, 2, 4, 8]))
def test_slot_schedule_packs_groups_without_straddling(lengths, slot_t, slots):
    """Every row is in exactly one slot of its own group; slots of a group start at its
    first row plus multiples of the slot width; spare slots point past the last row."""
    offsets = offsets_from_lengths(lengths)
    num_rows = sum(lengths)
    sched = slot_schedule(offsets, num_rows, slot_t, slots)
    groups, rows = sched.slot_group.tolist(), sched.slot_row.tolist()
    assert len(groups) == sched.num_tiles * slots
    assert sched.num_tiles == math.ceil(num_slots_upper(num_rows, len(lengths), slot_t) / slots)
    covered = torch.zeros(num_rows, dtype=torch.int64)
    for g, first in zip(groups, rows, strict=True):
        if g < 0:
            assert first == num_rows
            continue
        start, end = int(offsets[g]), int(offsets[g + 1])
        assert start <= first < end and (first - start) % slot_t == 0
        covered[first:min(first + slot_t, end)] += 1
    assert (covered == 1).all()
    used = [g for g in groups if g >= 0]
    assert used == sorted(used), "slots are in group order, so neighbours share programs"
    assert len(used) * slot_t == padded_rows(lengths, slot_t)
