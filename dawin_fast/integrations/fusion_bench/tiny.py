"""A tiny random CLIP vision model pool, for offline smoke runs of the plug-in.

``tiny_clip_vision_model(seed)`` builds a Hugging Face ``CLIPVisionModel`` from a small
config (no download): every model starts from the same random initialisation and moves
by seeded noise, like fine-tuned copies of one pretrained model. The pool config
``modelpool=dawin_fast/tiny_clip_vision`` uses it. ``tiny_heads(tasks)``: random heads
for it, for ``clip_dawin``'s ``method.heads`` (the tiny pool has no CLIP text model).
"""

from __future__ import annotations

import torch


def tiny_clip_vision_model(seed: int = 0, hidden_size: int = 32, intermediate_size: int = 64,
                           num_hidden_layers: int = 2, num_attention_heads: int = 4,
                           image_size: int = 16, patch_size: int = 4, noise: float = 0.02):
    """A random ``CLIPVisionModel`` (seed 0: the 'pretrained' one)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=intermediate_size,
                              num_hidden_layers=num_hidden_layers,
                              num_attention_heads=num_attention_heads, image_size=image_size,
                              patch_size=patch_size)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPVisionModel(config)
    if seed:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * noise)
    return model.eval()


def tiny_heads(tasks, width: int = 32, classes: int = 5, seed: int = 0
               ) -> dict[str, torch.Tensor]:
    """{task: [classes, width]} random heads over the tiny models' pooled output."""
    gen = torch.Generator().manual_seed(seed)
    return {t: torch.randn(classes, width, generator=gen) * 5 for t in tasks}
