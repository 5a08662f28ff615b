"""Gradients to per-sample, per-cluster and per-layer coefficients (and gates), through the
grouping, the sort and the unsort, on the PyTorch path and through the Triton kernels.

The reference is explicit and independent of dawin_fast: in float64, each sample b runs
the model whose parameters are sum_i c_i(b, layer) theta_i (``torch.func.functional_call``
with a differentiable merged state dict), and autograd gives the coefficient gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import dawin_fast
from dawin_fast import dawinize
from dawin_fast.ops import coeff_grad, interp_linear_torch
from dawin_fast.reference import interp_linear_reference
from tests.devices import BACKENDS, backend_device
from tests.models import perturb
from tests.reference import offsets_from_lengths

# fp32 results against float64 autograd: relative to the largest gradient.
RTOL = 2e-4


def tiny_hf_clip(num_models=3):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=8, patch_size=4)
    models = []
    for seed in range(num_models):
        torch.manual_seed(0)
        models.append(perturb(CLIPVisionModel(config), seed, scale=0.2))
    return models


def pooled(out):
    return out.pooler_output


def table_for(name: str, tables: dict[str, torch.Tensor]) -> str | None:
    keys = [k for k in tables if name == k or name.startswith(k + ".")]
    return max(keys, key=len) if keys else None


def reference_outputs(models, x, rows, layer_rows=None):
    """[B, ...] float64: sample b through sum_i c_i theta_i, c from the longest matching
    per-layer table (rows [B, M] each), else ``rows`` [B, M]."""
    layer_rows = layer_rows or {}
    base = models[0]
    states = [{k: v.double() for k, v in m.state_dict().items()} for m in models]
    outs = []
    for b in range(x.shape[0]):
        merged = {}
        for name, value in states[0].items():
            if not value.is_floating_point():
                merged[name] = value
                continue
            key = table_for(name, layer_rows)
            c = (layer_rows[key] if key is not None else rows)[b]
            merged[name] = sum(c[i] * s[name] for i, s in enumerate(states))
        outs.append(pooled(functional_call(base.double(), merged, (x[b:b + 1].double(),))))
    base.float()
    return torch.cat(outs)


def assert_grads_close(got, expected):
    for g, e in zip(got, expected, strict=True):
        scale = e.abs().max().item() + 1e-12
        assert g is not None
        err = (g.double().cpu() - e).abs().max().item() / scale
        assert err < RTOL, f"relative gradient error {err:.2e}"


def run_grad(backend, model, x, coeffs, leaves, dy, **kwargs):
    device = backend_device(backend)
    model = model.to(device)
    with dawin_fast.use_backend(backend):
        out = pooled(model(x.to(device), coeffs, **kwargs))
    return torch.autograd.grad(out, leaves, dy.to(device))


@pytest.fixture(scope="module")
def clip_models():
    return tiny_hf_clip()


def images(batch, seed=0):
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sample_gradients_match_reference(backend, clip_models):
    """coeffs [B, M] requiring grad: each sample's row gets its own gradient, even for
    samples with identical rows (which a deduplicating grouping would pool)."""
    model = dawinize(clip_models)
    x = images(5)
    gen = torch.Generator().manual_seed(1)
    rows = torch.rand(5, 3, generator=gen)
    rows[3] = rows[1]  # identical rows stay separate groups
    dy = torch.randn(5, 16, generator=gen)
    device = backend_device(backend)
    c = rows.to(device).requires_grad_(True)
    (got,) = run_grad(backend, model, x, c, [c], dy)

    ref_rows = rows.double().requires_grad_(True)
    ref = reference_outputs(clip_models, x, ref_rows)
    expected = torch.autograd.grad(ref, [ref_rows], dy.double())
    assert_grads_close([got], expected)
    assert not torch.allclose(got[1], got[3])  # different samples, different gradients


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_cluster_gradients_match_reference(backend, clip_models):
    """A [G, M] table with labels: gradients flow through the sort and the unsort."""
    model = dawinize(clip_models)
    x = images(6, seed=2)
    gen = torch.Generator().manual_seed(3)
    table = torch.rand(3, 3, generator=gen)
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    dy = torch.randn(6, 16, generator=gen)
    device = backend_device(backend)
    t = table.to(device).requires_grad_(True)
    (got,) = run_grad(backend, model, x, t, [t], dy, cluster_labels=labels.to(device))

    ref_table = table.double().requires_grad_(True)
    ref = reference_outputs(clip_models, x, ref_table[labels])
    expected = torch.autograd.grad(ref, [ref_table], dy.double())
    assert_grads_close([got], expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_layer_gradients_match_reference(backend, clip_models):
    """Per-layer tables (one row for a whole block, per-sample rows for one linear, a row
    for the embeddings) next to per-sample base rows, all requiring grad."""
    model = dawinize(clip_models)
    x = images(4, seed=4)
    gen = torch.Generator().manual_seed(5)
    rows = torch.rand(4, 3, generator=gen)
    block = torch.rand(3, generator=gen)
    fc1 = torch.rand(4, 3, generator=gen)
    embed = torch.rand(3, generator=gen)
    dy = torch.randn(4, 16, generator=gen)
    device = backend_device(backend)
    leaves = [t.to(device).requires_grad_(True) for t in (rows, block, fc1, embed)]
    layers = {"encoder.layers.1": leaves[1], "encoder.layers.1.mlp.fc1": leaves[2],
              "embeddings": leaves[3]}
    got = run_grad(backend, model, x, leaves[0], leaves, dy, layer_coeffs=layers)

    ref_leaves = [t.double().requires_grad_(True) for t in (rows, block, fc1, embed)]
    ref_layers = {"encoder.layers.1": ref_leaves[1].expand(4, -1),
                  "encoder.layers.1.mlp.fc1": ref_leaves[2],
                  "embeddings": ref_leaves[3].expand(4, -1)}
    ref = reference_outputs(clip_models, x, ref_leaves[0], ref_layers)
    expected = torch.autograd.grad(ref, ref_leaves, dy.double())
    assert_grads_close(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gate_gradients_match_reference(backend, clip_models):
    """A gate asked with a layer's input computes per-sample rows inside the forward;
    its parameters get the reference's gradient."""
    model = dawinize(clip_models)
    x = images(3, seed=6)
    torch.manual_seed(7)
    gate = nn.Linear(16, 3)
    dy = torch.randn(3, 16)
    device = backend_device(backend)
    gate_dev = gate.to(device)

    def rows_of(h):  # [B, L, 16] -> [B, 3], as WEMoE's gate (mean over tokens)
        return gate_dev(h).mean(dim=1)

    got = run_grad(backend, model, x, torch.tensor([1.0, 0.0, 0.0], device=device),
                   list(gate_dev.parameters()), dy,
                   layer_coeffs={"encoder.layers.0.mlp.fc1": rows_of})

    # Reference: the gate's rows from fc1's input, computed by the (unmerged: rows
    # [1, 0, 0]) model up to that layer, then the per-sample merged fc1.
    gate64 = nn.Linear(16, 3).double()
    gate64.load_state_dict({k: v.double().cpu() for k, v in gate.state_dict().items()})
    base_rows = torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=torch.float64)
    h = torch.cat([reference_fc1_input(clip_models, x[b:b + 1]) for b in range(3)])
    fc1_rows = gate64(h).mean(dim=1)
    ref = reference_outputs(clip_models, x, base_rows, {"encoder.layers.0.mlp.fc1": fc1_rows})
    expected = torch.autograd.grad(ref, list(gate64.parameters()), dy.double())
    assert_grads_close(got, expected)


def reference_fc1_input(models, x):
    """fc1's input in model 0 (float64), as the reference for the gate's input."""
    captured = []
    base = models[0].double()
    hook = base.encoder.layers[0].mlp.fc1.register_forward_hook(
        lambda m, inp, out: captured.append(inp[0]))
    base(x.double())
    hook.remove()
    base.float()
    return captured[0]


def test_identical_rows_without_grad_still_share_a_group(clip_models):
    """Without gradients, identical per-sample rows are still merged into one group."""
    from dawin_fast.nn.grouped import _needs_rows

    rows = torch.rand(4, 3)
    assert not _needs_rows(rows, None, None, 4)
    assert _needs_rows(rows.requires_grad_(True), None, None, 4)
    with torch.no_grad():
        assert not _needs_rows(rows, None, None, 4)
    assert _needs_rows(torch.rand(4, 3), None, {"a": torch.rand(4, 3)}, 4)
    assert not _needs_rows(torch.rand(4, 3), None, {"a": torch.rand(3)}, 4)


# ------------------------------------------------------------- op-level strategies


@pytest.mark.parametrize("lengths", [[50] * 6, [3, 0, 17, 1, 0, 9], [1] * 11, [0, 40], [64]])
@pytest.mark.parametrize("num_models", [1, 2, 5])
def test_cpu_strategies_and_coeff_grad_strategies_match_reference(lengths, num_models):
    """Both forward strategies of the PyTorch path and both coefficient-gradient
    strategies against float64 (outputs poisoned with NaN first)."""
    gen = torch.Generator().manual_seed(sum(lengths) + num_models)
    rows = sum(lengths)
    x = torch.randn(rows, 24, generator=gen)
    weight = torch.randn(num_models, 19, 24, generator=gen) / 5
    bias = torch.randn(num_models, 19, generator=gen)
    coeffs = torch.randn(len(lengths), num_models, generator=gen) * 2
    offsets = offsets_from_lengths(lengths)
    expected, _ = interp_linear_reference(x, weight, coeffs, offsets, bias)
    for strategy in ("loop", "rowscaled"):
        out = torch.full((rows, 19), float("nan"))
        interp_linear_torch(x, weight, coeffs, offsets, bias, out=out, strategy=strategy)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)

    dy = torch.randn(rows, 19, generator=gen)
    cd = coeffs.double().requires_grad_(True)
    row_c = torch.repeat_interleave(cd, torch.tensor(lengths), dim=0)
    yd = sum(row_c[:, i:i + 1] * (x.double() @ weight[i].double().T + bias[i].double())
             for i in range(num_models))
    (ec,) = torch.autograd.grad(yd, cd, dy.double())
    for strategy in ("rowwise", "pergroup"):
        got = coeff_grad(x, dy, weight, coeffs, offsets, bias, strategy=strategy)
        torch.testing.assert_close(got.double(), ec, rtol=1e-4, atol=1e-3)


def test_strategy_choice_follows_rows_per_group():
    from dawin_fast.ops import coeff_grad_strategy, cpu_strategy

    assert cpu_strategy(64, 64, 4) == "rowscaled"  # one row per group: no merges
    assert cpu_strategy(64 * 50, 64, 4) == "loop"  # ViT-B/32 per-sample, M=4
    assert cpu_strategy(64 * 50, 64, 9) == "loop"
    assert coeff_grad_strategy(64 * 50, 64, 4) == "pergroup"
    assert coeff_grad_strategy(64, 64, 4) == "rowwise"
    assert coeff_grad_strategy(1000, 1, 1) == "rowwise"  # M=1: one matmul either way


def test_bad_strategies_raise():
    x, weight = torch.randn(3, 4), torch.randn(2, 5, 4)
    coeffs, offsets = torch.rand(1, 2), torch.tensor([0, 3])
    with pytest.raises(ValueError, match="strategy"):
        interp_linear_torch(x, weight, coeffs, offsets, strategy="nope")
    with pytest.raises(ValueError, match="strategy"):
        coeff_grad(x, torch.randn(3, 5), weight, coeffs, offsets, None, strategy="nope")
