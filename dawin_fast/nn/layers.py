"""Interpolating versions of the layers a vision transformer is made of.

Each takes M same-shape modules (``from_modules``) and, in ``forward``, runs the
interpolation selected by the active routing (``dawin_fast.route``):

* big matrices go through the fused kernel (``DaWinLinear``): attention's QKV and output
  projections (``DaWinMultiheadAttention``), the patch embedding (``DaWinPatchEmbed``);
* small parameters are interpolated per group and broadcast per sample: LayerNorm
  (``DaWinLayerNorm``), LayerScale (``DaWinLayerScale``), embedding tables
  (``DaWinEmbedding``: M lookups combined, never a merged table), and free tensors
  (``InterpolatedTensor``: class/positional embeddings, projections).

All stacked parameters are frozen (inference library).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import interp_linear
from .linear import DaWinLinear
from .routing import require_routing


def stack_tensors(tensors: Sequence[torch.Tensor | None], what: str) -> torch.Tensor | None:
    """Stack M tensors [*S] into [M, *S]; a clear error names ``what`` on any mismatch."""
    if all(t is None for t in tensors):
        return None
    if any(t is None for t in tensors):
        raise ValueError(f"{what}: present in some models and missing in others")
    first = tensors[0]
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(
                f"{what}: model {i} has {tuple(t.shape)} {t.dtype} on {t.device}, "
                f"model 0 has {tuple(first.shape)} {first.dtype} on {first.device}"
            )
    return torch.stack([t.detach() for t in tensors])


def _frozen(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t, requires_grad=False)


def _same_config(modules: Sequence[nn.Module], attrs: Sequence[str], what: str) -> None:
    for attr in attrs:
        values = [getattr(m, attr) for m in modules]
        for i, value in enumerate(values[1:], start=1):
            if value != values[0]:
                raise ValueError(f"{what}: model {i} has {attr}={value!r}, model 0 "
                                 f"has {values[0]!r}")


class InterpolatedTensor(nn.Module):
    """A free tensor (class token, positional embedding, projection) of M models.

    ``forward()`` returns the interpolation per group laid out per sample: [B, *S] under a
    routing with groups, [1, *S] under a single coefficient row.
    """

    routing_name: str | None = None  # see DaWinLinear

    def __init__(self, stacked: torch.Tensor) -> None:
        super().__init__()
        self.stacked = _frozen(stacked)

    @classmethod
    def from_tensors(cls, tensors: Sequence[torch.Tensor], what: str = "tensor"):
        return cls(stack_tensors(tensors, what))

    def forward(self) -> torch.Tensor:
        routing = require_routing("InterpolatedTensor").resolve(self.routing_name)
        table = routing.interpolate(self.stacked)
        if routing.offsets is None:
            return table
        return table[routing.groups_of_rows(routing.num_samples)]


class DaWinLayerNorm(nn.Module):
    """LayerNorm with per-group interpolated weight and bias, normalised in float32."""

    routing_name: str | None = None  # see DaWinLinear

    def __init__(self, normalized_shape: tuple[int, ...], eps: float,
                 weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.weight = _frozen(weight)
        self.bias = _frozen(bias)

    @classmethod
    def from_modules(cls, norms: Sequence[nn.LayerNorm], what: str = "LayerNorm"):
        _same_config(norms, ("normalized_shape", "eps"), what)
        return cls(norms[0].normalized_shape, norms[0].eps,
                   stack_tensors([n.weight for n in norms], f"{what}.weight"),
                   stack_tensors([n.bias for n in norms], f"{what}.bias"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), self.normalized_shape, None, None, self.eps)
        if self.weight is not None or self.bias is not None:
            routing = require_routing("DaWinLayerNorm").resolve(self.routing_name, x)
            if self.weight is not None:
                y = y * routing.for_input(routing.interpolate(self.weight.float()), x)
            if self.bias is not None:
                y = y + routing.for_input(routing.interpolate(self.bias.float()), x)
        return y.to(x.dtype)


class DaWinLayerScale(nn.Module):
    """LayerScale (``x * gamma``, open_clip and timm) with per-group interpolated gamma."""

    routing_name: str | None = None  # see DaWinLinear

    def __init__(self, gamma: torch.Tensor) -> None:
        super().__init__()
        self.gamma = _frozen(gamma)

    @classmethod
    def from_modules(cls, scales: Sequence[nn.Module], what: str = "LayerScale"):
        return cls(stack_tensors([s.gamma for s in scales], f"{what}.gamma"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = require_routing("DaWinLayerScale").resolve(self.routing_name, x)
        return x * routing.for_input(routing.interpolate(self.gamma), x)


class DaWinEmbedding(nn.Module):
    """``nn.Embedding`` of M models: sum_i c_i E_i[ids], never a merged table.

    ids [B, ...] give one row of coefficients per sample; ids [1, ...] (shared positions)
    broadcast to every sample.
    """

    routing_name: str | None = None  # see DaWinLinear

    def __init__(self, stacked: torch.Tensor) -> None:
        super().__init__()
        self.weight = _frozen(stacked)

    @classmethod
    def from_modules(cls, embeddings: Sequence[nn.Embedding], what: str = "Embedding"):
        for i, e in enumerate(embeddings):
            if e.max_norm is not None:
                raise ValueError(f"{what}: model {i} uses max_norm, which dawin_fast "
                                 f"does not interpolate")
        return cls(stack_tensors([e.weight for e in embeddings], f"{what}.weight"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        routing = require_routing("DaWinEmbedding").resolve(self.routing_name)
        looked_up = self.weight[:, ids].float()  # [M, *ids.shape, D]
        coeffs = routing.coeffs.to(looked_up.device)
        if routing.offsets is None:
            out = torch.einsum("m,m...->...", coeffs[0], looked_up)
        else:
            batch = routing.num_samples
            name = f"layer {self.routing_name!r}" if self.routing_name else "DaWinEmbedding"
            if ids.dim() < 2:  # [B] per sample and [L] shared positions look alike
                raise ValueError(f"{name}: ids of shape {tuple(ids.shape)} have no batch dim, "
                                 f"so per-sample rows cannot tell per-sample ids [B] from "
                                 f"shared ids [L]; the model must look up [B, ...] or [1, ...] "
                                 f"ids (e.g. positions[None]), or run one row [M]")
            if ids.shape[0] not in (1, batch):
                raise ValueError(f"{name}: ids of shape {tuple(ids.shape)} are neither "
                                 f"per-sample [B={batch}, ...] nor shared [1, ...]")
            per_sample = coeffs[routing.groups_of_rows(batch)]  # [B, M]
            out = torch.einsum("bm,mb...->b...", per_sample,
                               looked_up.expand(-1, batch, *looked_up.shape[2:]))
        return out.to(self.weight.dtype)


class DaWinPatchEmbed(nn.Module):
    """A patch-embedding ``nn.Conv2d`` (stride = kernel, no padding) as a fused linear.

    ``forward`` returns what the convolution returns, [B, out, H', W']; ``tokens``
    returns the patch tokens [B, H'*W', out] directly (no round trip through NCHW).
    """

    def __init__(self, linear: DaWinLinear, kernel_size: tuple[int, int]) -> None:
        super().__init__()
        self.linear = linear
        self.kernel_size = kernel_size

    @classmethod
    def from_modules(cls, convs: Sequence[nn.Conv2d], what: str = "Conv2d"):
        _same_config(convs, ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                             "dilation", "groups", "padding_mode"), what)
        conv = convs[0]
        if not is_patch_conv(conv):
            raise ValueError(
                f"{what}: only patch-embedding convolutions (stride = kernel, no padding, "
                f"no dilation, groups=1) can be fused; got kernel {conv.kernel_size}, stride "
                f"{conv.stride}, padding {conv.padding}, dilation {conv.dilation}, "
                f"groups {conv.groups}"
            )
        weight = stack_tensors([c.weight.reshape(c.out_channels, -1) for c in convs],
                               f"{what}.weight")
        bias = stack_tensors([c.bias for c in convs], f"{what}.bias")
        linear = DaWinLinear(weight.shape[2], weight.shape[1], len(convs), bias=bias is not None,
                             device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        return cls(linear, tuple(conv.kernel_size))

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> patch tokens [B, H'*W', out] (row-major patch order, as Conv2d)."""
        batch, channels, height, width = images.shape
        kh, kw = self.kernel_size
        gh, gw = height // kh, width // kw
        patches = images[:, :, : gh * kh, : gw * kw].reshape(batch, channels, gh, kh, gw, kw)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, gh * gw, channels * kh * kw)
        return self.linear(patches)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        gh, gw = height // self.kernel_size[0], width // self.kernel_size[1]
        tokens = self.tokens(images)
        return tokens.transpose(1, 2).reshape(batch, -1, gh, gw)


class DaWinMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` of M models: fused QKV and output projections + SDPA.

    Same call signature as ``nn.MultiheadAttention`` (returns ``(output, None)``);
    ``need_weights=True`` is not supported (the fused path never forms attention weights).
    """

    # nn.Transformer*Layer read these to pick their fused fast path, which would run
    # nn.MultiheadAttention's packed weights: as "no packed QKV" they keep the module path,
    # which calls this layer.
    _qkv_same_embed_dim = False
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, batch_first: bool, dropout: float,
                 in_proj: DaWinLinear, out_proj: DaWinLinear) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.dropout = dropout
        self.in_proj = in_proj
        self.out_proj = out_proj

    @classmethod
    def from_modules(cls, attns: Sequence[nn.MultiheadAttention], what: str = "attention"):
        _same_config(attns, ("embed_dim", "num_heads", "batch_first", "dropout",
                             "_qkv_same_embed_dim"), what)
        attn = attns[0]
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
            raise ValueError(f"{what}: only nn.MultiheadAttention with equal q/k/v dims, no "
                             f"bias_k/bias_v and no add_zero_attn can be fused")
        in_weight = stack_tensors([a.in_proj_weight for a in attns], f"{what}.in_proj_weight")
        in_bias = stack_tensors([a.in_proj_bias for a in attns], f"{what}.in_proj_bias")
        in_proj = DaWinLinear(attn.embed_dim, 3 * attn.embed_dim, len(attns),
                              bias=in_bias is not None, device=in_weight.device,
                              dtype=in_weight.dtype)
        with torch.no_grad():
            in_proj.weight.copy_(in_weight)
            if in_bias is not None:
                in_proj.bias.copy_(in_bias)
        out_proj = DaWinLinear.from_linears([a.out_proj for a in attns])
        return cls(attn.embed_dim, attn.num_heads, attn.batch_first, attn.dropout,
                   in_proj, out_proj)

    def _project(self, x: torch.Tensor, part: slice) -> torch.Tensor:
        routing = require_routing("DaWinMultiheadAttention").resolve(
            self.in_proj.routing_name, x)
        bias = None if self.in_proj.bias is None else self.in_proj.bias[:, part]
        # A slice of the stacked QKV weight: a strided view, which the kernels accept.
        return interp_linear(x, self.in_proj.weight[:, part], routing.coeffs,
                             routing.row_offsets(x, self.in_proj.routing_name), bias,
                             one_hot=routing.one_hot_for(math.prod(x.shape[:-1])))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise NotImplementedError("DaWinMultiheadAttention: need_weights=True is not "
                                      "supported; call it with need_weights=False")
        if not self.batch_first:  # [L, B, E] -> [B, L, E]: rows of a sample must be contiguous
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, q_len, dim = query.shape
        if query is key and key is value:  # self-attention: one fused QKV projection
            q, k, v = self.in_proj(query).split(dim, dim=-1)
        else:
            q = self._project(query, slice(0, dim))
            k = self._project(key, slice(dim, 2 * dim))
            v = self._project(value, slice(2 * dim, 3 * dim))
        mask = _sdpa_mask(attn_mask, key_padding_mask, batch, self.num_heads, q_len,
                          key.shape[1], query.dtype)

        def heads(t):
            return t.reshape(batch, t.shape[1], self.num_heads, dim // self.num_heads
                             ).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(q), heads(k), heads(v), attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        out = self.out_proj(out.transpose(1, 2).reshape(batch, q_len, dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def _sdpa_mask(attn_mask, key_padding_mask, batch, num_heads, q_len, k_len, dtype):
    """nn.MultiheadAttention's masks (bool True = masked out, or additive float) for SDPA."""
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        if mask.dim() == 3:  # [B * heads, L, S]
            mask = mask.reshape(batch, num_heads, q_len, k_len)
    if key_padding_mask is not None:
        pad = _additive(key_padding_mask, dtype).reshape(batch, 1, 1, k_len)
        mask = pad if mask is None else mask + pad
    return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = masked out) as an additive one (-inf); a float mask as is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


def is_patch_conv(conv: nn.Conv2d) -> bool:
    """True for a convolution that is a linear map over non-overlapping patches."""
    return (conv.stride == conv.kernel_size and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.padding in ((0, 0), "valid"))


__all__ = [
    "DaWinEmbedding",
    "DaWinLayerNorm",
    "DaWinLayerScale",
    "DaWinMultiheadAttention",
    "DaWinPatchEmbed",
    "InterpolatedTensor",
    "is_patch_conv",
    "stack_tensors",
]
