"""Hugging Face CLIP's vision embeddings, interpolated per sample (used by ``dawinize``).

``CLIPVisionEmbeddings`` holds a free ``class_embedding`` [D] that its forward broadcasts
itself (``class_embedding.expand(B, 1, -1)``), which the generic conversion cannot lay out
per sample. This replacement computes the same embeddings with the interpolated patch
embedding, class embedding and position embedding of the group of every sample. The class
is recognised by name: importing transformers is never needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import DaWinEmbedding, DaWinPatchEmbed, InterpolatedTensor


def is_hf_clip_vision_embeddings(module: nn.Module) -> bool:
    return type(module).__name__ == "CLIPVisionEmbeddings" and hasattr(module, "class_embedding")


class DaWinCLIPVisionEmbeddings(nn.Module):
    """``transformers`` ``CLIPVisionEmbeddings`` of M models (no position interpolation)."""

    def __init__(self, patch_embedding: DaWinPatchEmbed, class_embedding: InterpolatedTensor,
                 position_embedding: DaWinEmbedding, position_ids: torch.Tensor,
                 image_size: int) -> None:
        super().__init__()
        self.patch_embedding = patch_embedding
        self.class_embedding = class_embedding
        self.position_embedding = position_embedding
        self.register_buffer("position_ids", position_ids, persistent=False)
        self.image_size = image_size

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module], what: str = "embeddings"):
        first = modules[0]
        for i, m in enumerate(modules[1:], start=1):
            if not torch.equal(m.position_ids, first.position_ids) or \
                    m.image_size != first.image_size:
                raise ValueError(f"{what}: model {i} has other positions or image size")
        return cls(
            DaWinPatchEmbed.from_modules([m.patch_embedding for m in modules],
                                         f"{what}.patch_embedding"),
            InterpolatedTensor.from_tensors([m.class_embedding for m in modules],
                                            f"{what}.class_embedding"),
            DaWinEmbedding.from_modules([m.position_embedding for m in modules],
                                        f"{what}.position_embedding"),
            first.position_ids.clone(), first.image_size,
        )

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
                ) -> torch.Tensor:
        if interpolate_pos_encoding:
            raise NotImplementedError("DaWinCLIPVisionEmbeddings: interpolate_pos_encoding is "
                                      "not supported; use images of the model's size")
        batch, _, height, width = pixel_values.shape
        if height != self.image_size or width != self.image_size:
            raise ValueError(f"Input image size ({height}*{width}) doesn't match model "
                             f"({self.image_size}*{self.image_size}).")
        weight = self.patch_embedding.linear.weight
        patches = self.patch_embedding.tokens(pixel_values.to(weight.dtype))  # [B, P, D]
        class_embeds = self.class_embedding().to(patches.dtype)  # [B or 1, D]
        embeddings = torch.cat([class_embeds.unsqueeze(1).expand(batch, 1, -1), patches], dim=1)
        return embeddings + self.position_embedding(self.position_ids).to(patches.dtype)
