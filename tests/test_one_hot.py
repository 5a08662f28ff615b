"""One-hot coefficient rows run as plain GEMMs (cuBLAS on a GPU), never the fused kernels.

DaWin's expert passes send the batch M times under the rows of eye(M); a single model is
one one-hot row. Each group's output is then ``F.linear`` with its own model's weight, so
the results must equal it exactly, and neither the Triton launcher nor the PyTorch
interpolation path (both behind ``torch.ops.dawin_fast.interp_linear``) may run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import dawin_fast
from dawin_fast import DaWin, DaWinClassifier, DaWinViT, interp_linear, op_checks, ops
from dawin_fast.nn import Routing, route
from tests.models import tiny_open_clip_visual
from tests.reference import offsets_from_lengths

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# name: (group lengths, each group's model, M)
CASES = {
    "expert pass (eye rows, equal groups)": ([6, 6, 6], [0, 1, 2], 3),
    "single model": ([9], [1], 2),
    "models out of order, equal groups": ([5, 5], [1, 0], 2),
    "repeated models, unequal and empty groups": ([4, 0, 7, 3, 0], [1, 0, 0, 1, 1], 2),
    "adjacent groups of one model": ([3, 4], [0, 0], 2),
}


class OpRecorder(TorchDispatchMode):
    """Every operator that reaches the dispatcher (custom ops show up as dawin_fast::*)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(f"{func.namespace}::{func.overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))

    def fused(self) -> list[str]:
        return [op for op in self.ops if op.startswith("dawin_fast::")]


@pytest.fixture
def no_fused_kernels(monkeypatch):
    """Make both fused implementations raise, whichever backend is active."""
    def refuse(*args, **kwargs):
        raise AssertionError("a fused interpolation kernel ran for one-hot rows")

    monkeypatch.setattr(ops.kernels, "interp_matmul", refuse)
    monkeypatch.setattr(ops, "interp_linear_torch", refuse)


def one_hot_inputs(lengths, models, num_models, dtype, bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lengths), 24, generator=gen).to(dtype)
    weight = torch.randn(num_models, 20, 24, generator=gen).to(dtype)
    b = torch.randn(num_models, 20, generator=gen).to(dtype) if bias else None
    coeffs = torch.eye(num_models)[models]
    return x, weight, coeffs, offsets_from_lengths(lengths), b


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_one_hot_rows_equal_each_models_linear(case, dtype, bias, no_fused_kernels):
    lengths, models, num_models = CASES[case]
    x, weight, coeffs, offsets, b = one_hot_inputs(lengths, models, num_models, dtype, bias)
    recorder = OpRecorder()
    with recorder:
        y = interp_linear(x, weight, coeffs, offsets, b)
    assert not recorder.fused()
    assert y.dtype == dtype and y.shape == (x.shape[0], 20)
    for g, model in enumerate(models):
        start, end = int(offsets[g]), int(offsets[g + 1])
        expected = F.linear(x[start:end], weight[model], None if b is None else b[model])
        assert torch.equal(y[start:end], expected), f"group {g} (model {model})"


def test_one_hot_keeps_leading_dims():
    x, weight, coeffs, offsets, b = one_hot_inputs([4, 4], [0, 1], 2, torch.float32, True)
    y = interp_linear(x.reshape(2, 4, 24), weight, coeffs, offsets, b)
    assert y.shape == (2, 4, 20)
    assert torch.equal(y[1], F.linear(x[4:], weight[1], b[1]))


def test_rows_that_are_not_one_hot_run_the_fused_op():
    """The recorder can see the fused op: near-one-hot and scaled rows still interpolate."""
    for row in ([0.999, 0.001], [2.0, 0.0], [1.0, 1.0], [0.5, 0.5]):
        x, weight, _, offsets, b = one_hot_inputs([5], [0], 2, torch.float32, True)
        recorder = OpRecorder()
        with recorder:
            interp_linear(x, weight, torch.tensor([row]), offsets, b)
        assert recorder.fused() == ["dawin_fast::interp_linear"], row


def test_check_values_reports_one_hot_rows():
    offsets = torch.tensor([0, 2, 2, 5])
    plan = ops.check_values(5, torch.tensor([[0.0, 1.0], [1.0, 0.0], [-0.0, 1.0]]), offsets)
    assert plan == ops.OneHot(models=(1, 0, 1), bounds=(0, 2, 2, 5))
    assert plan.runs() == [(1, 0, 2), (1, 2, 5)]  # the empty group is skipped
    assert ops.check_values(5, torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]),
                            offsets) is None
    with pytest.raises(ValueError, match="NaN"):
        ops.check_values(5, torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [1.0, 0.0]]),
                         offsets)


def test_one_hot_runs_skip_empty_groups():
    plan = ops.OneHot(models=(1, 1, 0, 0, 1), bounds=(0, 2, 5, 5, 7, 8))
    assert plan.runs() == [(1, 0, 2), (1, 2, 5), (0, 5, 7), (1, 7, 8)]
    assert plan.scaled(3).bounds == (0, 6, 15, 15, 21, 24)


def test_gradients_for_coeffs_keep_the_fused_op():
    """The one-hot path has no gradient for coeffs: asking for one runs the fused op."""
    x, weight, coeffs, offsets, b = one_hot_inputs([3, 3], [0, 1], 2, torch.float32, True)
    coeffs.requires_grad_(True)
    with dawin_fast.use_backend("torch"):
        interp_linear(x, weight, coeffs, offsets, b).sum().backward()
    assert coeffs.grad is not None and coeffs.grad.abs().sum() > 0
    x.requires_grad_(True)  # gradients for x alone: the one-hot path gives them
    interp_linear(x, weight, coeffs.detach(), offsets, b).sum().backward()
    expected = weight.sum(1)  # d/dx of sum(x W^T + b) is the column sums of each W
    torch.testing.assert_close(x.grad[:3], expected[0].expand(3, -1))
    torch.testing.assert_close(x.grad[3:], expected[1].expand(3, -1))


def test_routing_records_one_hot_once():
    routing = Routing(torch.eye(2), torch.tensor([0, 3, 6]))
    assert routing.one_hot
    assert routing.one_hot_for(6 * 4) == ops.OneHot((0, 1), (0, 12, 24))
    assert Routing(torch.tensor([0.0, 1.0])).one_hot_for(10) == ops.OneHot((1,), (0, 10))
    assert not Routing(torch.tensor([[0.3, 0.7]]), torch.tensor([0, 6])).one_hot
    with pytest.raises(ValueError, match="not a multiple"):
        routing.one_hot_for(7)


def test_one_hot_plan_must_match_the_call():
    x, weight, coeffs, offsets, b = one_hot_inputs([3, 3], [0, 1], 2, torch.float32, True)
    with pytest.raises(ValueError, match="one_hot is for"):
        interp_linear(x, weight, coeffs, offsets, b, one_hot=ops.OneHot((0, 1), (0, 3, 7)))


def tiny_dawin(num_models=2):
    visuals = [tiny_open_clip_visual(s) for s in range(num_models)]
    gen = torch.Generator().manual_seed(0)
    heads = [torch.randn(6, 12, generator=gen) for _ in range(num_models)]
    return visuals, heads, DaWin(DaWinClassifier(DaWinViT.from_open_clip(visuals), heads),
                                 mode="per_sample")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_expert_passes_never_enter_the_fused_kernels(backend, monkeypatch):
    """DaWin.expert_logits on a tiny open_clip ViT: plain GEMMs only, one value check per
    forward, each expert's logits those of its own model. The merged pass that follows
    does run the fused op (so the recorder would see one)."""
    if backend == "triton" and not dawin_fast.kernels.interpreting():
        pytest.skip("the Triton backend on CPU tensors needs TRITON_INTERPRET=1")
    visuals, heads, dawin = tiny_dawin(3)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    summaries = []
    real_summary = op_checks._coeff_summary
    monkeypatch.setattr(op_checks, "_coeff_summary",
                        lambda coeffs: summaries.append(1) or real_summary(coeffs))
    recorder = OpRecorder()
    with dawin_fast.use_backend(backend), torch.no_grad(), recorder:
        expert = dawin.expert_logits(images)
    assert not recorder.fused()
    assert "aten::addmm" in recorder.ops
    assert len(summaries) == 1, "one value check for the whole expert forward"
    for i, (visual, head) in enumerate(zip(visuals, heads, strict=True)):
        with torch.no_grad():
            own = F.normalize(visual(images), dim=-1) @ head.T
        torch.testing.assert_close(expert[i], own, rtol=1e-5, atol=1e-5)

    recorder = OpRecorder()
    with dawin_fast.use_backend(backend), torch.no_grad(), recorder:
        dawin.predict(images, expert_logits=expert)
    assert "dawin_fast::interp_linear" in recorder.fused()


def test_single_model_row_through_a_routed_model(no_fused_kernels):
    visuals, heads, dawin = tiny_dawin(2)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = dawin.model(images, torch.tensor([0.0, 1.0]))
        own = F.normalize(visuals[1](images), dim=-1) @ heads[1].T
    torch.testing.assert_close(got, own, rtol=1e-5, atol=1e-5)


def test_route_with_one_hot_rows_is_exact_for_a_layer(no_fused_kernels):
    layer = dawin_fast.DaWinLinear.from_linears([torch.nn.Linear(8, 5) for _ in range(2)])
    x = torch.randn(4, 3, 8)
    with torch.no_grad(), route(torch.eye(2), torch.tensor([0, 2, 4])):
        y = layer(x)
    with torch.no_grad():
        assert torch.equal(y[:2], F.linear(x[:2], layer.weight[0], layer.bias[0]))
        assert torch.equal(y[2:], F.linear(x[2:], layer.weight[1], layer.bias[1]))
