"""Fixtures the FusionBench tests instantiate from configs (``_target_``)."""

from __future__ import annotations

import torch


def random_heads(tasks, width: int = 32, classes: int = 5, seed: int = 0):
    """{task: [classes, width]} random heads over the tiny models' pooled output."""
    gen = torch.Generator().manual_seed(seed)
    return {t: torch.randn(classes, width, generator=gen) * 5 for t in tasks}
