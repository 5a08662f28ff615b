"""dawinize of Hugging Face causal LMs (Llama, Qwen2, GPT-2), one coefficient row per
sequence, against models holding each row's interpolated state dict: forward logits,
greedy, beam search and sampling through ``generate``, with left padding. fp32, tiny
random configs (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dawin_fast import dawinize, use_backend
from dawin_fast.nn import DaWinCausalLM, DaWinLinear
from dawin_fast.nn.hf_lm import DaWinRMSNorm
from tests.devices import run_backend
from tests.lm_models import (
    FAMILIES,
    OTHER_FAMILIES,
    left_padded_prompts,
    merged_reference,
    tiny_causal_lm,
)

pytest.importorskip("transformers")

TOL = dict(rtol=1e-4, atol=1e-4)
# Distinct rows per sequence, negative entries and a one-hot row included.
ROWS = torch.tensor([[0.5, 0.3, 0.2], [1.2, -0.5, 0.3], [0.0, 0.0, 1.0]])
NEW = 5


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    """(family, models, merged, references): M=3 models, one reference per row of ROWS."""
    models = [tiny_causal_lm(request.param, seed) for seed in range(3)]
    return request.param, models, dawinize(models), [merged_reference(models, r) for r in ROWS]


def _generate(model, ids, mask, **kwargs):
    return model.generate(ids, attention_mask=mask, max_new_tokens=NEW,
                          return_dict_in_generate=True, output_logits=True, **kwargs)


@torch.no_grad()
def test_conversion(lm):
    family, models, merged, _ = lm
    assert isinstance(merged, DaWinCausalLM) and merged.num_models == 3
    kinds = {type(m) for m in merged.module.modules()}
    assert DaWinLinear in kinds
    assert (DaWinRMSNorm in kinds) == (family != "gpt2")
    plain = [m for m in merged.module.modules()
             if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
    assert not plain, "every linear / Conv1D must be interpolating"
    assert type(models[0]).forward is not type(merged.module).forward  # originals untouched


@torch.no_grad()
def test_forward_logits_per_sequence(lm):
    _, _, merged, refs = lm
    ids, mask = left_padded_prompts()
    with use_backend("torch"):
        logits = merged(ids, ROWS, attention_mask=mask).logits
    real = mask.bool()
    for b, ref in enumerate(refs):
        expected = ref(ids, attention_mask=mask).logits
        torch.testing.assert_close(logits[b][real[b]], expected[b][real[b]], **TOL)
    # The rows really differ: sequence 0's logits are not those of row 1's model.
    other = refs[1](ids, attention_mask=mask).logits[0][real[0]]
    assert (logits[0][real[0]] - other).abs().max() > 1e-2


@torch.no_grad()
def test_greedy_generate(lm):
    _, _, merged, refs = lm
    ids, mask = left_padded_prompts()
    with use_backend("torch"):
        got = _generate(merged, ids, mask, coeffs=ROWS, do_sample=False)
    assert got.sequences.shape == (3, ids.shape[1] + NEW)
    for b, ref in enumerate(refs):
        want = _generate(ref, ids, mask, do_sample=False)
        assert torch.equal(got.sequences[b], want.sequences[b]), f"sequence {b}"
        for step in range(NEW):
            torch.testing.assert_close(got.logits[step][b], want.logits[step][b], **TOL)


@torch.no_grad()
def test_beam_search(lm):
    """num_beams=3 and two returned sequences each: rows expand with the beams, and
    beam reordering keeps every beam on its sequence's row."""
    _, _, merged, refs = lm
    ids, mask = left_padded_prompts()
    kwargs = dict(num_beams=3, num_return_sequences=2, do_sample=False, early_stopping=True)
    with use_backend("torch"):
        got = merged.generate(ids, attention_mask=mask, coeffs=ROWS, max_new_tokens=NEW,
                              **kwargs)
    for b, ref in enumerate(refs):
        want = ref.generate(ids, attention_mask=mask, max_new_tokens=NEW, **kwargs)
        assert torch.equal(got[2 * b: 2 * b + 2], want[2 * b: 2 * b + 2]), f"sequence {b}"


@torch.no_grad()
def test_sampling_fixed_seed(lm):
    """Multinomial sampling draws from one generator over the whole batch: the reference
    replays it step by step (no cache), each sequence's distribution from its own model."""
    _, _, merged, refs = lm
    ids, mask = left_padded_prompts()
    torch.manual_seed(123)
    with use_backend("torch"):
        got = merged.generate(ids, attention_mask=mask, coeffs=ROWS, max_new_tokens=NEW,
                              do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    torch.manual_seed(123)
    seq, att = ids, mask
    for _ in range(NEW):
        positions = (att.cumsum(-1) - 1).masked_fill(att == 0, 1)  # as generate makes them
        last = torch.stack([ref(seq, attention_mask=att, position_ids=positions).logits[b, -1]
                            for b, ref in enumerate(refs)])
        token = torch.multinomial(last.float().softmax(-1), 1)
        seq = torch.cat([seq, token], 1)
        att = torch.cat([att, torch.ones_like(token)], 1)
    assert torch.equal(got, seq)


def assert_per_sequence_logits(logits, models, ids, mask):
    """Sequence b's logits (its real tokens) are those of the model holding the state
    dicts interpolated with ``ROWS[b]``."""
    for b, row in enumerate(ROWS):
        expected = merged_reference(models, row)(ids, attention_mask=mask).logits[b]
        real = mask[b].bool()
        torch.testing.assert_close(logits[b][real], expected[real], **TOL)


@pytest.mark.parametrize("family", OTHER_FAMILIES)
@torch.no_grad()
def test_other_families_forward(family):
    """Mistral, Gemma ((1 + w) RMSNorm, scaled embedding), Phi-3 (fused QKV and gate/up
    linears), Qwen3 (q/k norms): per-sequence logits as the interpolated state dicts'."""
    models = [tiny_causal_lm(family, seed) for seed in range(3)]
    merged = dawinize(models)
    ids, mask = left_padded_prompts()
    with use_backend("torch"):
        logits = merged(ids, ROWS, attention_mask=mask).logits
    assert_per_sequence_logits(logits, models, ids, mask)


@torch.no_grad()
def test_one_row_for_all_sequences():
    models = [tiny_causal_lm("llama", seed) for seed in range(3)]
    merged = dawinize(models)
    ids, mask = left_padded_prompts()
    row = torch.tensor([0.2, -0.3, 1.1])
    ref = merged_reference(models, row)
    with use_backend("torch"):
        got = merged.generate(ids, attention_mask=mask, coeffs=row, max_new_tokens=NEW,
                              num_beams=2, do_sample=False)
        same = merged.generate(ids, attention_mask=mask, coeffs=row.expand(3, -1),
                               max_new_tokens=NEW, num_beams=2, do_sample=False)
    want = ref.generate(ids, attention_mask=mask, max_new_tokens=NEW, num_beams=2,
                        do_sample=False)
    assert torch.equal(got, want) and torch.equal(same, want)


@pytest.mark.parametrize("backend", ["triton"])
@torch.no_grad()
def test_tied_llama_through_the_kernels(backend):
    """Tied embeddings share one stacked vocabulary; the fused kernels (interpreter on a
    CPU) give the references' logits."""
    models = [tiny_causal_lm("llama", seed, tie=True) for seed in range(3)]
    merged = dawinize(models)
    head = merged.module.get_output_embeddings()
    assert head.weight is merged.module.get_input_embeddings().weight
    ids, mask = left_padded_prompts()
    logits = run_backend(backend, lambda m, *a: m(*a[:2], attention_mask=a[2]).logits,
                         merged, ids, ROWS, mask)
    assert_per_sequence_logits(logits, models, ids, mask)


@torch.no_grad()
def test_bad_inputs():
    models = [tiny_causal_lm("gpt2", seed) for seed in range(2)]
    merged = dawinize(models)
    ids, mask = left_padded_prompts()
    with pytest.raises(ValueError, match=r"\[B, M\] = \[3, 2\]"):
        merged(ids, torch.rand(2, 2), attention_mask=mask)
    with pytest.raises(ValueError, match="M=2"):
        merged(ids, torch.rand(3), attention_mask=mask)
    with pytest.raises(ValueError, match="coeffs is required"):
        merged.generate(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="NaN"):
        merged(ids, torch.tensor([float("nan"), 1.0]), attention_mask=mask)
    with pytest.raises(RuntimeError, match="needs coefficients"):
        merged.module(ids, attention_mask=mask)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_unsupported_layer_is_named():
    models = [tiny_causal_lm("llama", seed) for seed in range(2)]
    for m in models:
        m.model.layers[1].mlp.extra = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match=r"^model\.layers\.1\.mlp\.extra: .*BatchNorm1d"):
        dawinize(models)
    # A linear subclass with its own forward computes something else: refused, not
    # converted as a plain linear (which would silently drop the factor 2).
    models = [tiny_causal_lm("llama", seed) for seed in range(2)]
    for m in models:
        m.lm_head = ScaledLinear(32, 48, bias=False)
    with pytest.raises(ValueError, match=r"^lm_head: .*ScaledLinear subclasses nn\.Linear"):
        dawinize(models)
