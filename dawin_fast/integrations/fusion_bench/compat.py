"""Lets FusionBench 0.2.33's CLIP task pools import under transformers 5.

Their modules import ``transformers.models.clip.modeling_clip.CLIPVisionTransformer``.
Transformers 5 merged that class into ``CLIPVisionModel`` (which now holds the encoder
itself), so ``fusion_bench.taskpool.CLIPVisionModelTaskPool`` fails on import with
``ImportError``. They use the name only in type hints and in ``isinstance`` checks of
their layer-wise feature saving. ``alias_clip_vision_transformer`` names
``CLIPVisionModel`` so, where the class is missing: those checks then accept the layout
that transformers 5 has. FusionBench's code is left as it is.
"""

from __future__ import annotations


def alias_clip_vision_transformer() -> None:
    """Where transformers has no ``CLIPVisionTransformer``, name ``CLIPVisionModel`` so."""
    from transformers.models.clip import modeling_clip

    if not hasattr(modeling_clip, "CLIPVisionTransformer"):
        modeling_clip.CLIPVisionTransformer = modeling_clip.CLIPVisionModel
