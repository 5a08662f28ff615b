"""The interpolating layers against the original layers with interpolated parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dawin_fast.nn import (
    DaWinEmbedding,
    DaWinLayerNorm,
    DaWinMultiheadAttention,
    DaWinPatchEmbed,
    route,
)
from tests.devices import run_backend
from tests.models import interpolate_model, perturb

TOL = dict(rtol=1e-4, atol=1e-5)
ROWS = torch.tensor([[0.7, 0.3], [0.0, 1.0], [1.5, -0.5]])  # one group per sample
OFFSETS = torch.tensor([0, 1, 2, 3])


def copies(factory, n=2):
    """n models of one layer: one random init, then a different perturbation each."""
    torch.manual_seed(0)
    first = factory()
    return [perturb(copy.deepcopy(first), seed) for seed in range(n)]


def per_sample(modules, fn):
    """Output of sample b computed by the module interpolated with ROWS[b]."""
    return [fn(interpolate_model(modules, ROWS[b]), b) for b in range(3)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("batch_first", [True, False])
@torch.no_grad()
def test_multihead_self_attention(backend, batch_first):
    attns = copies(lambda: nn.MultiheadAttention(16, 4, batch_first=batch_first))
    fused = DaWinMultiheadAttention.from_modules(attns)
    x = torch.randn(3, 5, 16)
    xin = x if batch_first else x.transpose(0, 1)
    def call(fused, xin, rows, offsets):
        with route(rows, offsets):
            return fused(xin, xin, xin, need_weights=False)

    got, weights = run_backend(backend, call, fused, xin, ROWS, OFFSETS)
    assert weights is None
    got = got if batch_first else got.transpose(0, 1)

    def ref(attn, b):
        xb = x[b : b + 1] if batch_first else x[b : b + 1].transpose(0, 1)
        out = attn(xb, xb, xb, need_weights=False)[0]
        return out if batch_first else out.transpose(0, 1)

    torch.testing.assert_close(got, torch.cat(per_sample(attns, ref)), **TOL)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "padding", "cross"])
@torch.no_grad()
def test_multihead_masks_and_cross_attention(mask_kind):
    attns = copies(lambda: nn.MultiheadAttention(16, 2, batch_first=True))
    fused = DaWinMultiheadAttention.from_modules(attns)
    q = torch.randn(3, 4, 16)
    kv = torch.randn(3, 6, 16) if mask_kind == "cross" else q
    kwargs = {}
    if mask_kind == "bool":
        kwargs["attn_mask"] = torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)
    elif mask_kind == "float":
        kwargs["attn_mask"] = torch.randn(4, 4)
    elif mask_kind == "padding":
        kwargs["key_padding_mask"] = torch.tensor([[False, False, True, True]] * 3)
    with route(ROWS, OFFSETS):
        got, _ = fused(q, kv, kv, need_weights=False, **kwargs)

    def ref(attn, b):
        kw = dict(kwargs)
        if "key_padding_mask" in kw:
            kw["key_padding_mask"] = kw["key_padding_mask"][b : b + 1]
        return attn(q[b : b + 1], kv[b : b + 1], kv[b : b + 1], need_weights=False, **kw)[0]

    torch.testing.assert_close(got, torch.cat(per_sample(attns, ref)), **TOL)


def test_multihead_rejects_need_weights_and_unsupported_configs():
    attns = copies(lambda: nn.MultiheadAttention(8, 2, batch_first=True))
    fused = DaWinMultiheadAttention.from_modules(attns)
    x = torch.randn(1, 3, 8)
    with route(torch.tensor([0.5, 0.5])), pytest.raises(NotImplementedError, match="need_w"):
        fused(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match="bias_k"):
        DaWinMultiheadAttention.from_modules(copies(lambda: nn.MultiheadAttention(
            8, 2, add_bias_kv=True)))
    with pytest.raises(ValueError, match="num_heads"):
        DaWinMultiheadAttention.from_modules([nn.MultiheadAttention(8, 2),
                                              nn.MultiheadAttention(8, 4)])


@pytest.mark.parametrize("shape", ["batch_first", "flat_rows"])
@torch.no_grad()
def test_layer_norm(shape):
    norms = copies(lambda: nn.LayerNorm(8))
    fused = DaWinLayerNorm.from_modules(norms)
    x = torch.randn(3, 4, 8)
    with route(ROWS, OFFSETS):
        got = fused(x) if shape == "batch_first" else fused(x.reshape(12, 8)).reshape(3, 4, 8)
    torch.testing.assert_close(got, torch.cat(per_sample(norms, lambda n, b: n(x[b : b + 1]))),
                               **TOL)


@torch.no_grad()
def test_layer_norm_half_input_keeps_dtype():
    fused = DaWinLayerNorm.from_modules(copies(lambda: nn.LayerNorm(8)))
    with route(torch.tensor([0.5, 0.5])):
        assert fused(torch.randn(2, 8).half()).dtype == torch.float16


@torch.no_grad()
def test_patch_embed_matches_conv():
    convs = copies(lambda: nn.Conv2d(3, 8, kernel_size=4, stride=4))
    fused = DaWinPatchEmbed.from_modules(convs)
    x = torch.randn(3, 3, 10, 13)  # sizes not multiples of the patch: trailing pixels dropped
    with route(ROWS, OFFSETS):
        got = fused(x)
    torch.testing.assert_close(got, torch.cat(per_sample(convs, lambda c, b: c(x[b : b + 1]))),
                               **TOL)


def test_patch_embed_rejects_overlapping_convolution():
    with pytest.raises(ValueError, match="patch-embedding"):
        DaWinPatchEmbed.from_modules(copies(lambda: nn.Conv2d(3, 8, 3, stride=1, padding=1)))


@pytest.mark.parametrize("ids_shape", ["per_sample", "shared"])
@torch.no_grad()
def test_embedding(ids_shape):
    embeddings = copies(lambda: nn.Embedding(10, 6))
    fused = DaWinEmbedding.from_modules(embeddings)
    ids = torch.randint(0, 10, (3, 5) if ids_shape == "per_sample" else (1, 5))
    with route(ROWS, OFFSETS):
        got = fused(ids)
    expected = per_sample(embeddings, lambda e, b: e(ids[b : b + 1] if ids.shape[0] == 3
                                                     else ids))
    torch.testing.assert_close(got, torch.cat(expected), **TOL)
    with route(ROWS, OFFSETS), pytest.raises(ValueError, match="neither per-sample"):
        fused(torch.zeros(2, 5, dtype=torch.long))


def test_layers_need_routing():
    fused = DaWinLayerNorm.from_modules(copies(lambda: nn.LayerNorm(4)))
    with pytest.raises(RuntimeError, match="DaWinLayerNorm needs coefficients"):
        fused(torch.randn(2, 4))
