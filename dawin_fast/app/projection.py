"""Scoring a classifier on a dataset whose classes are some of, or groups of, the head's.

ImageNet-R and -A are scored on the 200 logits of their classes, ObjectNet on its own
classes, each taking the largest logit of the ImageNet classes mapped to it. The
projection sits inside the interpolated model, so every method (each model alone, WiSE-FT,
the expert pass DaWin's entropies come from, DaWin itself) sees the projected logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn.grouped import GroupedModel


class ProjectedClassifier(GroupedModel):
    """``classifier``'s logits pooled onto a dataset's classes: class k's logit is the
    largest logit of the head classes ``groups[k]`` (one class: that logit)."""

    def __init__(self, classifier: GroupedModel, groups: Sequence[Sequence[int]]) -> None:
        super().__init__()
        groups = [list(g) for g in groups]
        if not groups or not all(groups):
            raise ValueError("ProjectedClassifier: every dataset class needs a head class")
        self.classifier = classifier
        self.num_models = classifier.num_models
        width = max(len(g) for g in groups)
        # Padding with a group's own first class leaves its maximum unchanged.
        index = torch.tensor([g + [g[0]] * (width - len(g)) for g in groups])
        self.register_buffer("index", index, persistent=False)

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        encoder = getattr(self.classifier, "encoder", None)
        return getattr(encoder, "image_shape", None)

    def forward_routed(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier.forward_routed(x)  # [B, C]
        return logits[:, self.index].amax(dim=-1)  # [B, K]
