"""Tiny models with random weights, and the interpolated-state-dict reference."""

from __future__ import annotations

import copy

import torch
from torch import nn


def perturb(model: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    """Move every floating parameter and buffer by seeded noise (distinct 'fine-tuned' copies)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)
    return model.eval()


def tiny_open_clip_visual(seed: int = 0, **overrides) -> nn.Module:
    from open_clip.transformer import VisionTransformer

    config = dict(image_size=16, patch_size=4, width=32, layers=2, heads=4, mlp_ratio=2.0,
                  output_dim=12)
    config.update(overrides)
    torch.manual_seed(1234)  # one architecture, same init ...
    visual = VisionTransformer(**config)
    return perturb(visual, seed)  # ... then models drift apart


def interpolate_model(models, row) -> nn.Module:
    """The reference: one model whose floating-point parameters are sum_i row[i] * theta_i
    (buffers, equal in every model, are model 0's)."""
    merged = copy.deepcopy(models[0])
    states = [m.state_dict(keep_vars=True) for m in models]
    new_state = {}
    for name, value in states[0].items():
        if isinstance(value, nn.Parameter) and value.is_floating_point():
            new_state[name] = sum(float(c) * s[name].detach().double() for c, s in
                                  zip(row, states, strict=True)).to(value.dtype)
        else:
            new_state[name] = value.detach()
    merged.load_state_dict(new_state)
    return merged.eval()


def per_sample_reference(models, rows, inputs, call=None) -> torch.Tensor:
    """Output b = the model interpolated with rows[b], run on input b alone."""
    call = call or (lambda model, x: model(x))
    outs = [call(interpolate_model(models, rows[b]), inputs[b : b + 1])
            for b in range(inputs.shape[0])]
    return torch.cat(outs)
