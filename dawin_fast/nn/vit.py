"""``DaWinViT``: M open_clip vision transformers as one interpolating model.

The transformer blocks keep open_clip's own code with every layer made interpolating
(``dawin_fast.nn.convert_modules``): fused QKV/output projections and MLP linears, per-group
LayerNorm and LayerScale. The parts open_clip's ``VisionTransformer.forward`` handles
itself are written out here: the patch embedding (a fused linear over patches), the class
and positional embeddings (interpolated per group, laid out per sample), pooling and the
final projection (a fused linear).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .convert import convert_modules
from .grouped import GroupedModel
from .layers import (
    DaWinMultiheadAttention,
    DaWinPatchEmbed,
    InterpolatedTensor,
    stack_tensors,
)
from .linear import DaWinLinear
from .routing import name_layers


def check_same_architecture(models: Sequence[nn.Module], what: str = "models") -> None:
    """Raise a ``ValueError`` naming the first parameter or buffer that differs in kind."""
    reference = models[0].state_dict()
    for i, model in enumerate(models[1:], start=1):
        state = model.state_dict()
        for name in reference.keys() | state.keys():
            if name not in state or name not in reference:
                where = f"model {i}" if name not in state else "model 0"
                raise ValueError(f"{what}: '{name}' is missing from {where}")
        for name, tensor in reference.items():
            other = state[name]
            if other.shape != tensor.shape or other.dtype != tensor.dtype:
                raise ValueError(
                    f"{what}: '{name}' differs: model 0 has {tuple(tensor.shape)} "
                    f"{tensor.dtype}, model {i} has {tuple(other.shape)} {other.dtype}"
                )


class DaWinViT(GroupedModel):
    """M open_clip ``VisionTransformer``\\ s of one config, interpolated per sample group.

    ``forward(images, coeffs, labels=None)`` returns the image features [B, output_dim]
    (and the tokens when the models have ``output_tokens``) of every image under its
    interpolation: ``coeffs`` [M] for all images, [B, M] per image, or [G, M] with
    ``labels`` [B] for mixture clusters. Layers carry open_clip's module names
    (``transformer.resblocks.3.mlp.c_fc``, ``conv1``, ``proj``, ...) for per-layer
    coefficients.
    """

    def __init__(self, visuals: Sequence[nn.Module]) -> None:
        super().__init__()
        visuals = list(visuals)
        _check_supported(visuals)
        first = visuals[0]
        self.num_models = len(visuals)
        self.pool_type = first.pool_type
        self.final_ln_after_pool = first.final_ln_after_pool
        self.output_tokens = first.output_tokens
        self.patch_embed = DaWinPatchEmbed.from_modules([v.conv1 for v in visuals], "conv1")
        self.class_embedding = InterpolatedTensor.from_tensors(
            [v.class_embedding for v in visuals], "class_embedding")
        self.positional_embedding = InterpolatedTensor.from_tensors(
            [v.positional_embedding for v in visuals], "positional_embedding")
        self.ln_pre = convert_modules([v.ln_pre for v in visuals], "ln_pre")
        self.transformer = convert_modules([v.transformer for v in visuals], "transformer")
        # Our sorted batch is batch-first whatever the originals were built with.
        self.transformer.batch_first = True
        for module in self.transformer.modules():
            if isinstance(module, DaWinMultiheadAttention):
                module.batch_first = True
        self.ln_post = convert_modules([v.ln_post for v in visuals], "ln_post")
        self.proj = None
        if first.proj is not None:  # [width, output_dim]: a linear with weight proj^T
            weight = stack_tensors([v.proj.t() for v in visuals], "proj")
            self.proj = DaWinLinear(weight.shape[2], weight.shape[1], self.num_models,
                                    bias=False, device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                self.proj.weight.copy_(weight)
        name_layers(self)  # open_clip's names (the patch embedding is its conv1)
        self.patch_embed.linear.routing_name = "conv1"
        self.eval()

    @classmethod
    def from_open_clip(cls, visuals: Sequence[nn.Module]) -> DaWinViT:
        """Build from open_clip ``VisionTransformer``\\ s (``model.visual``) of one config."""
        return cls(visuals)

    def forward_routed(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if images.dim() != 4:
            raise ValueError(f"DaWinViT: images must be [B, C, H, W], got {tuple(images.shape)}")
        batch = images.shape[0]
        x = self.patch_embed.tokens(images)  # [B, P, width]
        cls_token = self.class_embedding()  # [B or 1, width]
        x = torch.cat([cls_token.to(x.dtype).unsqueeze(1).expand(batch, -1, -1), x], dim=1)
        x = x + self.positional_embedding().to(x.dtype)  # [B or 1, P + 1, width]
        x = self.ln_pre(x)
        x = self.transformer(x)
        pooled, tokens = self._pool(x)
        if self.proj is not None:
            pooled = self.proj(pooled)
        return (pooled, tokens) if self.output_tokens else pooled

    def _pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.final_ln_after_pool:
            pooled, tokens = _global_pool(x, self.pool_type)
            return self.ln_post(pooled), tokens
        return _global_pool(self.ln_post(x), self.pool_type)


def _global_pool(x: torch.Tensor, pool_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's VisionTransformer._global_pool."""
    if pool_type == "avg":
        return x[:, 1:].mean(dim=1), x[:, 1:]
    if pool_type == "tok":
        return x[:, 0], x[:, 1:]
    return x, x


def _check_supported(visuals: Sequence[nn.Module]) -> None:
    if not visuals:
        raise ValueError("DaWinViT: need at least one model")
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    for i, v in enumerate(visuals):
        if not isinstance(v, VisionTransformer):
            raise TypeError(f"DaWinViT: model {i} is {type(v).__name__}, not an open_clip "
                            f"VisionTransformer (pass model.visual)")
        if v.attn_pool is not None:
            raise ValueError(f"DaWinViT: model {i} uses attentional pooling, not supported")
        if not isinstance(v.patch_dropout, nn.Identity) and v.training:
            raise ValueError(f"DaWinViT: model {i} has patch dropout in training mode")
        for block in v.transformer.resblocks:
            if not isinstance(block, ResidualAttentionBlock):
                raise ValueError(f"DaWinViT: model {i} uses {type(block).__name__} blocks; "
                                 f"only ResidualAttentionBlock is supported")
    check_same_architecture(visuals, "DaWinViT")
    first = visuals[0]
    for i, v in enumerate(visuals[1:], start=1):
        for attr in ("pool_type", "final_ln_after_pool", "output_tokens", "patch_size"):
            if getattr(v, attr) != getattr(first, attr):
                raise ValueError(f"DaWinViT: model {i} has {attr}={getattr(v, attr)!r}, "
                                 f"model 0 has {getattr(first, attr)!r}")


__all__ = ["DaWinViT", "check_same_architecture"]
