"""interp_linear and its two implementations against a float64 reference.

Every implementation writes into a NaN-poisoned output, so an element it forgets to
write fails the finiteness check. On the CPU the Triton kernels run through the
interpreter (fp32, fp16; its bf16 dot is broken); on a GPU they are compiled and bf16 is
checked too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dawin_fast
from dawin_fast import kernels
from dawin_fast.kernels.interp_matmul import block_schedule, row_groups
from dawin_fast.ops import interp_linear_torch
from tests.devices import backend_device
from tests.reference import assert_close_to_reference, offsets_from_lengths

IMPLS = ["combine", "rowscaled", "torch"]


def dtypes_for(impl, device):
    if device == "cuda":
        return [torch.float32, torch.float16, torch.bfloat16]
    if impl == "torch":
        return [torch.float32, torch.float16, torch.bfloat16]
    return [torch.float32, torch.float16]  # the interpreter's bf16 dot is broken


def skip_if_unrunnable(impl, device):
    """Triton kernels run on CUDA tensors, or on CPU tensors through the interpreter."""
    if impl != "torch" and device == "cpu" and not kernels.interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1; the cuda cases cover it")


@pytest.fixture
def device(device, request):
    """The conftest device, skipping Triton implementations that cannot run on it."""
    impl = request.node.callspec.params.get("impl", "torch")
    skip_if_unrunnable(impl, device)
    return device


def run_impl(impl, x, weight, coeffs, offsets, bias):
    """Run one implementation into a NaN-poisoned output."""
    out = torch.full((x.shape[0], weight.shape[1]), float("nan"), dtype=x.dtype, device=x.device)
    if impl == "torch":
        result = interp_linear_torch(x, weight, coeffs, offsets, bias, out=out)
    else:
        result = kernels.interp_matmul(x, weight, coeffs.float(), offsets, bias,
                                       strategy=impl, out=out)
    assert result.data_ptr() == out.data_ptr()
    return out


def make_inputs(lengths, k_dim, n_dim, num_models, dtype, device, *, bias=True, seed=0,
                coeff_scale=2.0, offsets_dtype=torch.int64):
    gen = torch.Generator().manual_seed(seed)
    num_rows = sum(lengths)
    x = torch.randn(num_rows, k_dim, generator=gen).to(dtype).to(device)
    weight = (torch.randn(num_models, n_dim, k_dim, generator=gen) / math.sqrt(max(k_dim, 1)))
    weight = weight.to(dtype).to(device)
    b = torch.randn(num_models, n_dim, generator=gen).to(dtype).to(device) if bias else None
    # Any real coefficients: negative, above 1, not summing to 1.
    coeffs = (torch.randn(len(lengths), num_models, generator=gen) * coeff_scale).to(device)
    offsets = offsets_from_lengths(lengths, offsets_dtype, device)
    return x, weight, coeffs, offsets, b


@pytest.mark.parametrize("impl", IMPLS)
@given(data=st.data())
def test_random_shapes_match_reference(impl, data):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = data.draw(st.sampled_from(dtypes_for(impl, device)), label="dtype")
    num_models = data.draw(st.integers(1, 16), label="M")
    k_dim = data.draw(st.integers(1, 70), label="K")
    n_dim = data.draw(st.integers(1, 70), label="N")
    lengths = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=8), label="lengths")
    bias = data.draw(st.booleans(), label="bias")
    offsets_dtype = data.draw(st.sampled_from([torch.int32, torch.int64]), label="offsets dtype")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    x, weight, coeffs, offsets, b = make_inputs(
        lengths, k_dim, n_dim, num_models, dtype, device, bias=bias, seed=seed,
        offsets_dtype=offsets_dtype,
    )
    y = run_impl(impl, x, weight, coeffs, offsets, b)
    assert_close_to_reference(y, x, weight, coeffs, offsets, b)


def segment_lengths(pattern: str, num_groups: int, num_rows: int, seed: int = 0) -> list[int]:
    """Punica-style group-size distributions summing to num_rows."""
    rng = np.random.default_rng(seed)
    if pattern == "identical":
        base = [num_rows // num_groups] * num_groups
        base[-1] += num_rows - sum(base)
        return base
    if pattern == "distinct":
        weights = np.arange(1, num_groups + 1, dtype=float)
    elif pattern == "uniform":
        weights = rng.uniform(0, 1, num_groups)
    elif pattern == "zipf":
        weights = 1.0 / np.arange(1, num_groups + 1) ** 1.5
    elif pattern == "skewed":
        weights = np.full(num_groups, 0.01)
        weights[0] = 1.0
    else:
        raise ValueError(pattern)
    counts = np.floor(weights / weights.sum() * num_rows).astype(int)
    counts[0] += num_rows - counts.sum()
    return counts.tolist()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pattern", ["identical", "distinct", "uniform", "zipf", "skewed"])
def test_segment_distributions(impl, pattern, device):
    lengths = segment_lengths(pattern, num_groups=7, num_rows=150)
    assert sum(lengths) == 150
    for dtype in dtypes_for(impl, device):
        x, weight, coeffs, offsets, b = make_inputs(lengths, 48, 40, 3, dtype, device)
        y = run_impl(impl, x, weight, coeffs, offsets, b)
        assert_close_to_reference(y, x, weight, coeffs, offsets, b)


EDGE_CASES = {
    "no rows": ([0], 16, 16, 2),
    "no rows, several groups": ([0, 0, 0], 16, 16, 2),
    "one row": ([1], 33, 17, 2),
    "fewer rows than a block": ([5], 20, 20, 2),
    "every row its own group": ([1] * 23, 24, 18, 2),
    "prime group count": ([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9], 19, 23, 3),
    "empty groups at both ends": ([0, 0, 17, 0, 9, 0], 32, 32, 2),
    "one model": ([30, 12], 21, 45, 1),
    "sixteen models": ([20, 7], 37, 29, 16),
    "thirty-two models": ([9, 4], 20, 18, 32),
    "K = 1": ([9, 4], 1, 13, 2),
    "K = 0 (bias only)": ([9, 4], 0, 13, 2),
    "N = 1": ([9, 4], 13, 1, 2),
    "long group": ([100], 50, 35, 2),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases(impl, case, device):
    lengths, k_dim, n_dim, num_models = EDGE_CASES[case]
    for dtype in dtypes_for(impl, device):
        for bias in (True, False):
            x, weight, coeffs, offsets, b = make_inputs(
                lengths, k_dim, n_dim, num_models, dtype, device, bias=bias
            )
            y = run_impl(impl, x, weight, coeffs, offsets, b)
            assert y.shape == (sum(lengths), n_dim)
            assert_close_to_reference(y, x, weight, coeffs, offsets, b)


@pytest.mark.parametrize("impl", ["combine", "rowscaled"])
def test_strided_inputs(impl, device):
    """Non-contiguous x, transposed weight storage, strided output all honour strides."""
    lengths = [7, 0, 12]
    x, weight, coeffs, offsets, b = make_inputs(lengths, 24, 20, 3, torch.float32, device)
    x_strided = torch.cat([x, x], dim=1)[:, ::2]
    assert not x_strided.is_contiguous()
    x_strided.copy_(x)
    weight_t = weight.transpose(1, 2).contiguous().transpose(1, 2)
    assert not weight_t.is_contiguous()
    out = torch.full((20, 19), float("nan"), device=device).t()
    kernels.interp_matmul(x_strided, weight_t, coeffs, offsets, b, strategy=impl, out=out)
    assert_close_to_reference(out, x, weight, coeffs, offsets, b)


def rows_past_int32(device):
    """x and a NaN-poisoned output whose 3 rows lie 2**30 elements apart (row 2 starts past
    2**31 elements: 32-bit index arithmetic would wrap), and the same call's compact
    inputs ``(x_small, weight, coeffs, offsets, bias)`` for the reference.

    The storages are allocated but barely touched (only the rows in use), so this costs
    little memory; a GPU needs 24 GiB (skipped below that)."""
    if device == "cuda" and torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GiB of GPU memory")
    k_dim = n_dim = 32
    row_stride = 2**30
    x_storage = torch.empty(2 * row_stride + k_dim, dtype=torch.float16, device=device)
    y_storage = torch.empty(2 * row_stride + n_dim, dtype=torch.float16, device=device)
    x = x_storage.as_strided((3, k_dim), (row_stride, 1))
    out = y_storage.as_strided((3, n_dim), (row_stride, 1))
    compact = make_inputs([2, 1], k_dim, n_dim, 2, torch.float16, device)
    x.copy_(compact[0])
    out.fill_(float("nan"))
    return x, out, compact


@pytest.mark.parametrize("impl", ["combine", "rowscaled"])
def test_int64_addressing(impl, device):
    """Row offsets past 2**31 elements: x and y rows 2**30 elements apart."""
    x, out, (x_small, weight, coeffs, offsets, b) = rows_past_int32(device)
    kernels.interp_matmul(x, weight, coeffs, offsets, b, strategy=impl, out=out)
    assert_close_to_reference(out, x_small, weight, coeffs, offsets, b)


@given(lengths=st.lists(st.integers(0, 50), min_size=1, max_size=12),
       block_m=st.sampled_from([1, 4, 16, 64]))
def test_block_schedule_partitions_rows_without_straddling(lengths, block_m):
    offsets = offsets_from_lengths(lengths)
    num_rows = sum(lengths)
    block_group, first_row = block_schedule(offsets, num_rows, block_m)
    covered = torch.zeros(num_rows, dtype=torch.int64)
    for g, start in zip(block_group.tolist(), first_row.tolist(), strict=True):
        if g < 0:
            continue
        end = min(start + block_m, int(offsets[g + 1]))
        assert int(offsets[g]) <= start < end, "block outside its group"
        covered[start:end] += 1
    assert (covered == 1).all(), "rows not covered exactly once"
    assert (row_groups(offsets, num_rows) == torch.repeat_interleave(
        torch.arange(len(lengths)), torch.tensor(lengths))).all()


def test_default_strategy_depends_on_group_size():
    assert kernels.default_strategy(256 * 50, 256, 2) == "rowscaled"
    assert kernels.default_strategy(12800, 1, 2) == "combine"
    # ... unless the pick has no config that fits in shared memory (tests/kernels/).
    assert kernels.choose_strategy(12800, 1, 2, torch.bfloat16) == "combine"
    assert kernels.choose_strategy(12800, 1, 256, torch.bfloat16) == "rowscaled"


# --------------------------------------------------------------------- public op


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_public_op_flattens_leading_dims(backend, device):
    skip_if_unrunnable(backend, device)
    x, weight, coeffs, offsets, b = make_inputs([6, 0, 6], 16, 12, 2, torch.float32, device)
    x3 = x.reshape(3, 4, 16)
    with dawin_fast.use_backend(backend):
        y = dawin_fast.interp_linear(x3, weight, coeffs, offsets, b)
    assert y.shape == (3, 4, 12)
    assert_close_to_reference(y.reshape(12, 12), x, weight, coeffs, offsets, b)


def test_public_op_bf16_on_cpu_uses_torch_path():
    x, weight, coeffs, offsets, b = make_inputs([5, 3], 16, 12, 2, torch.bfloat16, "cpu")
    y = dawin_fast.interp_linear(x, weight, coeffs, offsets, b)
    assert_close_to_reference(y, x, weight, coeffs, offsets, b)
    with dawin_fast.use_backend("triton"), pytest.raises(RuntimeError, match="bf16|bfloat16"):
        dawin_fast.interp_linear(x, weight, coeffs, offsets, b)


def test_public_op_accepts_float64_coeffs_and_1d_x():
    x, weight, coeffs, offsets, b = make_inputs([1], 8, 5, 2, torch.float32, "cpu")
    y = dawin_fast.interp_linear(x[0], weight, coeffs.double(), offsets, b)
    assert y.shape == (5,)
    assert_close_to_reference(y.reshape(1, 5), x, weight, coeffs, offsets, b)


def test_public_op_composes_with_torch_compile():
    x, weight, coeffs, offsets, b = make_inputs([4, 4], 16, 8, 2, torch.float32, "cpu")

    def f(x, weight, coeffs, offsets, b):
        return torch.relu(dawin_fast.interp_linear(x, weight, coeffs, offsets, b)) * 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    with dawin_fast.skip_value_checks():
        got = compiled(x, weight, coeffs, offsets, b)
    torch.testing.assert_close(got, f(x, weight, coeffs, offsets, b))
    torch.library.opcheck(torch.ops.dawin_fast.interp_linear, (x, weight, coeffs, offsets, b))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradients_for_x_and_coeffs(backend):
    x, weight, coeffs, offsets, b = make_inputs([3, 0, 5], 12, 7, 3, torch.float32,
                                                backend_device(backend))
    x.requires_grad_(True)
    coeffs.requires_grad_(True)
    with dawin_fast.use_backend(backend):
        y = dawin_fast.interp_linear(x, weight, coeffs, offsets, b)
    grad_out = torch.randn_like(y)
    gx, gc = torch.autograd.grad(y, (x, coeffs), grad_out)

    # The same function written with differentiable PyTorch ops, in float64.
    xd = x.detach().double().requires_grad_(True)
    cd = coeffs.detach().double().requires_grad_(True)
    lengths = (offsets[1:] - offsets[:-1])
    row_c = torch.repeat_interleave(cd, lengths, dim=0)
    yd = sum(row_c[:, i : i + 1] * (xd @ weight[i].double().T + b[i].double())
             for i in range(3))
    ex, ec = torch.autograd.grad(yd, (xd, cd), grad_out.double())
    torch.testing.assert_close(gx.double(), ex, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gc.double(), ec, rtol=1e-4, atol=1e-5)


def test_gradient_for_weight_raises():
    x, weight, coeffs, offsets, b = make_inputs([4], 8, 5, 2, torch.float32, "cpu")
    weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="weight/bias"):
        dawin_fast.interp_linear(x, weight, coeffs, offsets, b)


# ------------------------------------------------------------------------- errors


def _good():
    return make_inputs([3, 2], 8, 5, 2, torch.float32, "cpu")


def _replace(index, value):
    args = list(_good())
    args[index] = value
    return args


BAD_INPUTS = {
    "x not a tensor": (_replace(0, [[1.0]]), TypeError, "x must be a torch.Tensor"),
    "x int": (_replace(0, torch.ones(5, 8, dtype=torch.int32)), TypeError, "float32, float16"),
    "x float64": (_replace(0, torch.ones(5, 8, dtype=torch.float64)), TypeError, "float32"),
    "x 0-d": (_replace(0, torch.tensor(1.0)), ValueError, "at least 1 dimension"),
    "K mismatch": (_replace(0, torch.ones(5, 9)), ValueError, "features"),
    "weight 2-D": (_replace(1, torch.ones(5, 8)), ValueError, r"\[M, N, K\]"),
    "weight dtype": (_replace(1, torch.ones(2, 5, 8, dtype=torch.float16)), TypeError, "dtype"),
    "bias shape": (_replace(4, torch.ones(2, 6)), ValueError, "bias must be"),
    "bias dtype": (_replace(4, torch.ones(2, 5, dtype=torch.float16)), TypeError, "bias dtype"),
    "coeffs wrong M": (_replace(2, torch.ones(2, 3)), ValueError, "coeffs must be"),
    "coeffs 1-D": (_replace(2, torch.ones(2)), ValueError, "coeffs must be"),
    "coeffs int": (_replace(2, torch.ones(2, 2, dtype=torch.int64)), TypeError, "floating"),
    "coeffs NaN": (_replace(2, torch.tensor([[0.5, float("nan")], [1.0, 0.0]])),
                   ValueError, "NaN"),
    "coeffs inf": (_replace(2, torch.tensor([[0.5, float("inf")], [1.0, 0.0]])),
                   ValueError, "NaN or infinity"),
    "offsets float": (_replace(3, torch.tensor([0.0, 3.0, 5.0])), TypeError, "int32 or int64"),
    "offsets count != G+1": (_replace(3, torch.tensor([0, 5])), ValueError, r"\[G\+1\]"),
    "offsets not starting at 0": (_replace(3, torch.tensor([1, 3, 5])), ValueError, "start at 0"),
    "offsets decreasing": (_replace(3, torch.tensor([0, 4, 3])), ValueError, "non-decreasing"),
    "offsets not ending at T": (_replace(3, torch.tensor([0, 3, 4])), ValueError, "end at"),
    "offsets past T": (_replace(3, torch.tensor([0, 3, 6])), ValueError, "end at"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(case):
    args, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        dawin_fast.interp_linear(*args)


def test_device_mismatch_raises():
    x, weight, coeffs, offsets, b = _good()
    meta = torch.empty(2, 2, device="meta")
    with pytest.raises(ValueError, match="coeffs is on meta"):
        dawin_fast.interp_linear(x, weight, meta, offsets, b)


def test_unknown_backend_and_strategy():
    with pytest.raises(ValueError, match="backend"):
        with dawin_fast.use_backend("cuda"):
            pass
    x, weight, coeffs, offsets, b = _good()
    with pytest.raises(ValueError, match="strategy"):
        kernels.interp_matmul(x, weight, coeffs, offsets, b, strategy="fast")
