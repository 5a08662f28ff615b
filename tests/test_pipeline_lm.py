"""DaWinLM: DaWin on causal LMs (per-sequence entropy over the prompt, rows, mixture,
static and task-arithmetic modes), checked against the plain models computed one by one."""

from __future__ import annotations

import pytest
import torch

from dawin_fast import DaWinLM, dawinize, entropy, task_vectors, use_backend
from tests.lm_models import left_padded_prompts, tiny_causal_lm

pytest.importorskip("transformers")

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def llamas():
    return [tiny_causal_lm("llama", seed) for seed in range(3)]


def reference_entropies(models, ids, mask):
    """[M, B]: each model alone, mean next-token entropy over the real prompt tokens."""
    out = []
    for m in models:
        h = entropy(m(ids, attention_mask=mask).logits)  # [B, L]
        out.append((h * mask).sum(1) / mask.sum(1))
    return torch.stack(out)


@torch.no_grad()
def test_expert_pass_and_per_sample_rows(llamas):
    ids, mask = left_padded_prompts(batch=4, seed=1)
    dawin = DaWinLM(dawinize(llamas), mode="per_sample")
    with use_backend("torch"):
        expert = dawin.expert_logits(ids, mask)
        for i, m in enumerate(llamas):
            want = m(ids, attention_mask=mask).logits
            torch.testing.assert_close(expert[i][mask.bool()], want[mask.bool()], **TOL)
        h = reference_entropies(llamas, ids, mask)
        applied, p, labels, u = dawin.rows(ids, mask)
        torch.testing.assert_close(u, h, **TOL)
        torch.testing.assert_close(applied, torch.softmax(-h, 0).t(), **TOL)
        assert labels is None
        details = dawin.generate(ids, mask, return_details=True, max_new_tokens=3,
                                 do_sample=False)
        direct = dawin.model.generate(ids, attention_mask=mask, coeffs=applied,
                                      max_new_tokens=3, do_sample=False)
    assert torch.equal(details.output, direct)
    torch.testing.assert_close(details.applied, applied)


@torch.no_grad()
def test_padding_is_ignored(llamas):
    """Padded positions take no part in the expertise: other pad ids, same uncertainty."""
    ids, mask = left_padded_prompts(batch=3, seed=2)
    other = ids.masked_fill(mask == 0, 7)
    dawin = DaWinLM(dawinize(llamas), mode="per_sample")
    with use_backend("torch"):
        u = dawin.rows(ids, mask)[3]
        assert torch.equal(u, dawin.rows(other, mask)[3])
        unmasked = dawin.rows(other, torch.ones_like(mask))[3]
    assert not torch.allclose(u, unmasked)


@torch.no_grad()
def test_mixture_static_and_calibration(llamas):
    ids, mask = left_padded_prompts(batch=6, seed=3)
    merged = dawinize(llamas[:2])
    with use_backend("torch"):
        dawin = DaWinLM(merged, n_clusters=2)
        applied, p, labels, _ = dawin.rows(ids, mask)
        assert labels is not None and labels.shape == (6,)
        assert len({tuple(r.tolist()) for r in applied}) <= 2  # every sequence at its cluster
        torch.testing.assert_close(applied.sum(1), torch.ones(6), **TOL)
        calibrated = DaWinLM(merged, n_clusters=2).calibrate([(ids[:3], mask[:3]),
                                                              {"input_ids": ids[3:],
                                                               "attention_mask": mask[3:]}])
        assert calibrated.mixture is not None
        assert calibrated.rows(ids, mask)[2] is not None
        static = DaWinLM(merged, mode=0.25).generate(ids, mask, max_new_tokens=3,
                                                     do_sample=False)
        want = merged.generate(ids, attention_mask=mask, coeffs=torch.tensor([0.75, 0.25]),
                               max_new_tokens=3, do_sample=False)
    assert torch.equal(static, want)


@torch.no_grad()
def test_task_arithmetic(llamas):
    base, tuned = llamas[0], llamas[1:]
    stacked = dawinize(task_vectors(base, tuned))
    ids, mask = left_padded_prompts(batch=3, seed=4)
    dawin = DaWinLM(stacked, mode="per_sample", task_arithmetic=True)
    with use_backend("torch"):
        expert = dawin.expert_logits(ids, mask)
        for t, m in enumerate(tuned):  # expert t is theta_pre + tau_t = model t
            torch.testing.assert_close(expert[t][mask.bool()],
                                       m(ids, attention_mask=mask).logits[mask.bool()], **TOL)
        applied, p, _, _ = dawin.rows(ids, mask)
    h = reference_entropies(tuned, ids, mask)
    torch.testing.assert_close(applied[:, 0], torch.ones(3))
    torch.testing.assert_close(applied[:, 1:], 0.6 * torch.softmax(-h, 0).t(), **TOL)


def test_bad_arguments(llamas):
    with pytest.raises(TypeError, match="DaWinCausalLM"):
        DaWinLM(torch.nn.Linear(2, 2))
    merged = dawinize(llamas[:2])
    with pytest.raises(ValueError, match="too few"):
        DaWinLM(merged, task_arithmetic=True)
    with pytest.raises(ValueError, match="2 finite"):
        DaWinLM(merged, mode=[0.1, 0.2, 0.7])
    with pytest.raises(TypeError, match="input_ids"):
        DaWinLM(merged).calibrate([{"pixel_values": torch.zeros(1)}])
