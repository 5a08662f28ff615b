"""dawinize on a timm ViT and on custom modules, against interpolated state dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dawin_fast
from dawin_fast import dawinize
from tests.devices import run_backend
from tests.models import interpolate_model, per_sample_reference, perturb

TOL = dict(rtol=1e-4, atol=1e-4)


def timm_vits(num_models, **overrides):
    import timm

    config = dict(pretrained=False, img_size=16, patch_size=4, embed_dim=32, depth=2,
                  num_heads=2, num_classes=5)
    config.update(overrides)
    models = []
    for seed in range(num_models):
        torch.manual_seed(0)
        models.append(perturb(timm.create_model("vit_tiny_patch16_224", **config), seed))
    return models


@pytest.mark.parametrize("backend", ["torch", "triton"])
@torch.no_grad()
def test_timm_vit_static_and_per_sample(backend):
    models = timm_vits(2, init_values=0.3)  # init_values: LayerScale in every block
    merged = dawinize(models)
    x = torch.randn(4, 3, 16, 16)
    row = torch.tensor([0.25, 0.75])
    lam = torch.tensor([0.0, 0.4, 1.0, 0.4])
    rows = torch.stack([1 - lam, lam], dim=1)
    static = run_backend(backend, lambda *a: a[0](*a[1:]), merged, x, row)
    dynamic = run_backend(backend, lambda *a: a[0](*a[1:]), merged, x, rows)
    torch.testing.assert_close(static, interpolate_model(models, row)(x), **TOL)
    torch.testing.assert_close(dynamic, per_sample_reference(models, rows, x), **TOL)


class Custom(nn.Module):
    """An embedding, a [1, D] broadcast parameter, a [D] parameter and an MLP."""

    def __init__(self, differing_vector: bool = True):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.offset = nn.Parameter(torch.randn(1, 1, 8))  # batch-broadcast layout
        self.gain = nn.Parameter(torch.randn(8), requires_grad=differing_vector)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3))
        self.register_buffer("shift", torch.arange(8.0))

    def forward(self, ids):
        h = self.embed(ids) + self.offset + self.shift
        return self.mlp(self.norm(h * self.gain)).mean(dim=1)


def customs(num_models, share_gain=False):
    torch.manual_seed(0)
    models = [perturb(Custom(), seed) for seed in range(num_models)]
    if share_gain:
        for m in models[1:]:
            m.gain.data.copy_(models[0].gain.data)
    return models


@torch.no_grad()
def test_custom_module_with_free_parameters():
    models = customs(3, share_gain=True)  # a [D] parameter equal in all models is shared
    merged = dawinize(models)
    ids = torch.randint(0, 20, (4, 6))
    rows = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [-0.5, 1.0, 0.5]])
    torch.testing.assert_close(merged(ids, rows), per_sample_reference(models, rows, ids), **TOL)
    table, labels = rows[:2], torch.tensor([1, 0, 0, 1])
    torch.testing.assert_close(merged(ids, table, cluster_labels=labels),
                               per_sample_reference(models, table[labels], ids), **TOL)


@torch.no_grad()
def test_differing_vector_parameter_needs_a_single_row():
    models = customs(2)
    merged = dawinize(models)
    ids = torch.randint(0, 20, (3, 6))
    row = torch.tensor([0.4, 0.6])
    torch.testing.assert_close(merged(ids, row), interpolate_model(models, row)(ids), **TOL)
    with pytest.raises(RuntimeError, match="gain .* no leading batch-broadcast dim"):
        merged(ids, torch.tensor([[0.4, 0.6], [0.1, 0.9], [0.4, 0.6]]))


def test_unsupported_layers_and_mismatches_raise():
    with pytest.raises(ValueError, match="BatchNorm1d .* not supported"):
        dawinize([nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)) for _ in range(2)])
    with pytest.raises(ValueError, match=r"^1: layer type BatchNorm1d"):
        dawinize([nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)) for _ in range(2)])
    with pytest.raises(ValueError, match=r"^0: .*linear 1 differs .* weight shape"):
        dawinize([nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 5))])
    with pytest.raises(ValueError, match="model 1 is Conv1d"):
        dawinize([nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Conv1d(4, 4, 1))])
    with pytest.raises(ValueError, match="buffer differs"):
        a, b = Custom(), Custom()
        b.shift += 1
        dawinize([a, b])
    with pytest.raises(ValueError, match="patch-embedding"):
        dawinize([nn.Conv2d(3, 4, 3, padding=1) for _ in range(2)])
    with pytest.raises(TypeError, match="not an nn.Module"):
        dawinize([nn.Linear(2, 2), "model"])
    with pytest.raises(ValueError, match="at least one"):
        dawinize([])


@torch.no_grad()
def test_dawinize_keeps_originals_untouched():
    models = customs(2, share_gain=True)  # the shared gain and buffer must not be aliased
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    merged = dawinize(models)
    merged(torch.randint(0, 20, (2, 3)), torch.tensor([0.5, 0.5]))
    merged.to(torch.float64)
    assert models[0].gain.dtype == torch.float32 and models[0].shift.dtype == torch.float32
    for m, state in zip(models, before, strict=True):
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k])
        assert not isinstance(m.mlp[0], dawin_fast.DaWinLinear)


def hf_clip_visions(num_models):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=16, patch_size=4)
    models = []
    for seed in range(num_models):
        torch.manual_seed(0)
        models.append(perturb(CLIPVisionModel(config), seed))
    return models


@pytest.mark.parametrize("backend", ["torch", "triton"])
@torch.no_grad()
def test_hugging_face_clip_vision_model(backend):
    models = hf_clip_visions(2)
    merged = dawinize(models)
    x = torch.randn(3, 3, 16, 16)
    lam = torch.tensor([0.1, 0.6, 0.9])
    rows = torch.stack([1 - lam, lam], dim=1)

    def pooled(model, images):
        return model(pixel_values=images).pooler_output

    out = run_backend(backend, lambda *a: a[0](*a[1:]), merged, x, rows)
    assert type(out).__name__ == "BaseModelOutputWithPooling"
    torch.testing.assert_close(out.pooler_output,
                               per_sample_reference(models, rows, x, pooled), **TOL)
    torch.testing.assert_close(
        out.last_hidden_state,
        per_sample_reference(models, rows, x, lambda m, i: m(pixel_values=i).last_hidden_state),
        **TOL)


def test_an_open_clip_vit_is_refused_at_conversion_pointing_to_dawin_vit():
    """open_clip's class embedding [D] cannot be laid out per sample by dawinize: the
    refusal comes at conversion, before any forward, and says which module does it."""
    from tests.models import tiny_open_clip_visual

    match = r"^class_embedding \(32,\) .*use DaWinViT\.from_open_clip"
    with pytest.raises(ValueError, match=match):
        dawinize([tiny_open_clip_visual(0), tiny_open_clip_visual(1)])
