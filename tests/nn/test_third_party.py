"""dawinize on models users bring (timm, Hugging Face, torch.nn) with random weights.

Each is compared with the plainly interpolated model (floating-point parameters
sum_i c_i theta_i, run as an ordinary model), sample by sample, or must refuse with one
message naming the layer or argument. Rows: M=3, distinct, a negative entry, rows not
summing to 1.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import dawin_fast
from dawin_fast import dawinize, route
from dawin_fast.nn import DaWinLayerNorm
from tests.models import interpolate_model, per_sample_reference, perturb

TOL = dict(rtol=1e-4, atol=1e-4)
ROWS = torch.tensor([[0.5, 0.3, 0.2], [-0.2, 0.9, 0.6], [0.1, 0.1, 1.2], [1.0, 0.0, 0.0]])


@pytest.fixture(autouse=True)
def _torch_path():
    with dawin_fast.use_backend("torch"), torch.no_grad():
        yield


def three(make):
    """Three 'fine-tunes' of one random init."""
    models = []
    for seed in range(3):
        torch.manual_seed(0)
        models.append(perturb(make(), seed))
    return models


def timm_model(name, **config):
    import timm

    return lambda: timm.create_model(name, pretrained=False, num_classes=5, **config)


VIT = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_timm_vit_and_deit_with_a_frozen_class_token(name):
    models = three(timm_model(name, **VIT))
    for m in models[1:]:  # frozen in fine-tuning: equal in all, still sum_i c_i theta
        m.cls_token.copy_(models[0].cls_token)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(dawinize(models)(x, ROWS),
                               per_sample_reference(models, ROWS, x), **TOL)


def test_timm_swin_one_row_and_per_sample_refusal():
    models = three(timm_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=4,
                              embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4))
    merged, x = dawinize(models), torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(merged(x, ROWS[1]), interpolate_model(models, ROWS[1])(x), **TOL)
    with pytest.raises(ValueError, match=r"layer 'layers\.0\.blocks\.0\.attn\.qkv' .*windows"):
        merged(x, ROWS[:2])


def test_convnext_stem_layer_norm_2d_is_refused_or_converted_by_the_hook():
    from timm.layers import LayerNorm2d

    def stem():
        return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), LayerNorm2d(8))

    models = three(stem)
    with pytest.raises(ValueError, match=r"^1: layer type LayerNorm2d .*converters="):
        dawinize(models)

    class ChannelsFirst(nn.Module):
        def __init__(self, norm):
            super().__init__()
            self.norm = norm

        def forward(self, x):
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    merged = dawinize(models, converters={
        LayerNorm2d: lambda norms, name: ChannelsFirst(DaWinLayerNorm.from_modules(norms, name))})
    x = torch.randn(4, 3, 8, 8)  # W == C: the shape where a last-dim norm ran silently
    torch.testing.assert_close(merged(x, ROWS), per_sample_reference(models, ROWS, x), **TOL)


def bert_classifiers():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, num_labels=3,
                        max_position_embeddings=16)
    return three(lambda: BertForSequenceClassification(config))


def test_bert_attention_mask_and_labels_follow_their_samples():
    models = bert_classifiers()
    ids = torch.randint(0, 50, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[0, 2:] = 0
    mask[2, 4:] = 0
    targets = torch.tensor([0, 2, 1, 1])
    out = dawinize(models)(ids, ROWS, attention_mask=mask, labels=targets,
                           per_sample=["labels"])

    def reference(b):
        model = interpolate_model(models, ROWS[b])
        return model(ids[b:b + 1], attention_mask=mask[b:b + 1]).logits

    logits = torch.cat([reference(b) for b in range(4)])
    torch.testing.assert_close(out.logits, logits, **TOL)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(logits, targets), **TOL)


def test_a_one_dimensional_batch_sized_argument_must_be_declared():
    merged = dawinize(bert_classifiers())
    ids = torch.randint(0, 50, (4, 6))
    with pytest.raises(ValueError, match=r"argument 'labels' has shape \(4,\).*per_sample="):
        merged(ids, ROWS, labels=torch.tensor([0, 2, 1, 1]))
    with pytest.raises(ValueError, match=r"declared argument 'label' is not passed"):
        merged(ids, ROWS, labels=torch.tensor([0, 2, 1, 1]), per_sample=["label"])


def clip_config():
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                          num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, image_size=8, patch_size=4)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                      projection_dim=8)


def test_clip_text_model_with_an_attention_mask_in_a_batch_encoding():
    from transformers import BatchEncoding, CLIPTextModel

    models = three(lambda: CLIPTextModel(clip_config().text_config))
    # L <= M: CLIP checks L against position_embedding.weight.shape[0], which a converted
    # embedding holds as [M, V, D]
    ids = torch.randint(0, 40, (4, 3))
    mask = torch.ones(4, 3, dtype=torch.long)
    mask[1, 2:] = 0
    inputs = BatchEncoding({"input_ids": ids, "attention_mask": mask})
    out = dawinize(models)(coeffs=ROWS, **inputs)
    for b in range(4):
        ref = interpolate_model(models, ROWS[b])(input_ids=ids[b:b + 1],
                                                 attention_mask=mask[b:b + 1])
        torch.testing.assert_close(out.pooler_output[b:b + 1], ref.pooler_output, **TOL)
        torch.testing.assert_close(out.last_hidden_state[b:b + 1], ref.last_hidden_state, **TOL)


def test_clip_model_one_row_or_a_refusal_naming_its_logit_scale():
    from transformers import CLIPModel

    models = three(lambda: CLIPModel(clip_config()))
    ids, pixels = torch.randint(0, 40, (4, 3)), torch.randn(4, 3, 8, 8)  # L <= M, see above
    merged = dawinize(models)
    out = merged(input_ids=ids, pixel_values=pixels, coeffs=ROWS[1])
    ref = interpolate_model(models, ROWS[1])(input_ids=ids, pixel_values=pixels)
    torch.testing.assert_close(out.logits_per_image, ref.logits_per_image, **TOL)
    with pytest.raises(RuntimeError, match=r"^logit_scale \(\) differs between the models"):
        merged(input_ids=ids, pixel_values=pixels, coeffs=ROWS)


def test_causal_lm_per_sequence_rows():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    models = three(lambda: GPT2LMHeadModel(config))
    ids = torch.randint(0, 40, (4, 5))
    logits = dawinize(models)(ids, ROWS).logits
    ref = torch.cat([interpolate_model(models, ROWS[b])(ids[b:b + 1]).logits for b in range(4)])
    torch.testing.assert_close(logits, ref, **TOL)


def encoders(batch_first):
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
    return three(lambda: nn.TransformerEncoder(copy.deepcopy(layer), 2,
                                               enable_nested_tensor=False))


def test_transformer_encoder_batch_first_with_a_padding_mask():
    models = encoders(batch_first=True)
    x = torch.randn(4, 4, 16)  # L == B: the [L, L] mask must not be sorted
    causal = nn.Transformer.generate_square_subsequent_mask(4)
    pad = torch.zeros(4, 4, dtype=torch.bool)
    pad[1, 3] = True
    got = dawinize(models)(x, ROWS, mask=causal, src_key_padding_mask=pad,
                           shared=["mask"], per_sample=["src_key_padding_mask"])
    ref = torch.cat([interpolate_model(models, ROWS[b])(
        x[b:b + 1], mask=causal, src_key_padding_mask=pad[b:b + 1]) for b in range(4)])
    torch.testing.assert_close(got, ref, **TOL)
    with pytest.raises(ValueError, match=r"argument 'mask' has shape \(4, 4\).*shared="):
        dawinize(models)(x, ROWS, mask=causal)


def test_transformer_encoder_sequence_first_one_row_or_refusal():
    models = encoders(batch_first=False)
    merged, x = dawinize(models), torch.randn(5, 4, 16)  # [L, B, E]
    torch.testing.assert_close(merged(x, ROWS[1]), interpolate_model(models, ROWS[1])(x), **TOL)
    with pytest.raises(ValueError, match=r"layer 'layers\.0\.self_attn' is sequence-first"):
        merged(x, ROWS)


class Positions(nn.Module):
    """Position ids [L] looked up with no batch dim, added to per-sample tokens."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(10, 8)
        self.positions = nn.Embedding(10, 8)

    def forward(self, ids):
        return self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))


def test_one_dimensional_position_ids_are_refused_under_per_sample_rows():
    models = three(Positions)
    ids = torch.randint(0, 10, (4, 4))  # L == B
    merged = dawinize(models)
    torch.testing.assert_close(merged(ids, ROWS[1]), interpolate_model(models, ROWS[1])(ids),
                               **TOL)
    with pytest.raises(ValueError, match=r"layer 'positions': ids of shape \(4,\) have no "
                                         r"batch dim"):
        merged(ids, ROWS)


class Scaled(nn.Module):
    """A linear, a free bias in the batch-broadcast layout [1, 8] and a free scale."""

    def __init__(self, scale_shape=(1, 8)):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(1, 8))
        self.scale = nn.Parameter(torch.randn(scale_shape))  # (8,): one value for the batch
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x) * self.scale + self.bias


def test_free_parameters_equal_in_every_model_are_scaled_by_the_row_sum():
    x = torch.randn(4, 8)
    models = three(Scaled)
    for m in models[1:]:
        m.bias.copy_(models[0].bias)
        m.scale.copy_(models[0].scale)
    torch.testing.assert_close(dawinize(models)(x, ROWS),
                               per_sample_reference(models, ROWS, x), **TOL)
    models = three(lambda: Scaled(scale_shape=(8,)))
    for m in models[1:]:
        m.scale.copy_(models[0].scale)
    merged = dawinize(models)
    same_sum = torch.tensor([[0.9, 0.6, 0.0], [0.5, 0.5, 0.5], [1.5, 0.0, 0.0], [0.0, 0.0, 1.5]])
    torch.testing.assert_close(merged(x, same_sum), per_sample_reference(models, same_sum, x),
                               **TOL)
    torch.testing.assert_close(merged(x, ROWS[1]), interpolate_model(models, ROWS[1])(x), **TOL)
    with pytest.raises(RuntimeError, match=r"^scale \(8,\) is scaled by each row's sum"):
        merged(x, ROWS)  # one [8] value cannot be (sum_i c_i) theta for every sample


def test_cluster_labels_and_the_old_spelling():
    models = three(Scaled)
    merged, x = dawinize(models), torch.randn(4, 8)
    labels = torch.tensor([1, 0, 0, 1])
    table = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    torch.testing.assert_close(merged(x, table, cluster_labels=labels),
                               per_sample_reference(models, table[labels], x), **TOL)
    with pytest.raises(TypeError, match=r"DaWinModel: labels= goes to the model.*"
                                        r"cluster_labels="):
        merged(x, table, labels=labels)


def test_errors_name_what_the_user_knows():
    merged = dawinize(three(Scaled))
    with pytest.raises(TypeError, match=r"^DaWinModel: coeffs is required"):
        merged(torch.randn(2, 8))
    with pytest.raises(RuntimeError, match=r"`with dawin_fast\.route\(coeffs, offsets\):`"):
        merged.module(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"^linear: .*linear 1 differs"):
        dawinize([Scaled(), _wider(Scaled())])


def _wider(model):
    model.linear = nn.Linear(8, 9)
    return model


def test_hooks_are_not_shared_with_the_source_models():
    models = three(Scaled)
    fired = []
    models[0].register_forward_hook(lambda *a: fired.append("original"))
    merged = dawinize(models)
    merged.module.register_forward_hook(lambda *a: fired.append("merged"))
    models[0].register_forward_hook(lambda *a: fired.append("original later"))
    fired.clear()
    merged(torch.randn(2, 8), ROWS[0])
    assert "merged" in fired and "original later" not in fired
    fired.clear()
    models[0](torch.randn(2, 8))
    assert "merged" not in fired


def test_whole_model_save_refuses_with_one_line_and_deepcopy_works():
    merged = dawinize(three(Scaled))
    with pytest.raises(TypeError, match=r"cannot be saved whole .*state_dict\(\)"):
        pickle.dumps(merged)
    x = torch.randn(2, 8)
    torch.testing.assert_close(copy.deepcopy(merged)(x, ROWS[1]), merged(x, ROWS[1]))
    rebuilt = dawinize(three(Scaled))
    rebuilt.load_state_dict(merged.state_dict())
    torch.testing.assert_close(rebuilt(x, ROWS[:2]), merged(x, ROWS[:2]))


def test_tracing_refuses_and_compiling_the_module_under_route_matches_eager():
    merged, x = dawinize(three(Scaled)), torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="torch.jit.trace would bake in"):
        torch.jit.trace(lambda t: merged(t, torch.tensor([1.0, 0.0, 0.0])), (x,))
    whole = torch.compile(merged, backend="eager", fullgraph=True)
    with pytest.raises(Exception, match=r"compile its module \(merged\.module for dawinize\)"):
        whole(x, ROWS[:2])  # Dynamo wraps the library's one line in its own report
    compiled = torch.compile(merged.module, backend="eager", fullgraph=True)
    with route(ROWS[1]):
        torch.testing.assert_close(compiled(x), merged(x, ROWS[1]), **TOL)


class Similarity(nn.Module):
    """A contrastive output: every sample against every other, [B, B] and [C, B]."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x, queries):
        h = self.linear(x)
        return {"features": h, "per_query": queries @ h.T}


def test_outputs_sorted_along_another_dim_are_refused():
    models = three(Similarity)
    merged, x, queries = dawinize(models), torch.randn(4, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"DaWinModel: output\.per_query has shape \(3, 4\)"):
        merged(x, ROWS, queries)  # [C, B]: its dim 1 is in sorted order
    out = merged(x, ROWS[1], queries)  # one row: nothing is sorted
    torch.testing.assert_close(out["per_query"],
                               interpolate_model(models, ROWS[1])(x, queries)["per_query"], **TOL)
    with pytest.raises(ValueError, match=r"DaWinModel: output\.per_query has shape \(4, 4\)"):
        merged(x, ROWS, torch.randn(4, 8), shared=["queries"])
