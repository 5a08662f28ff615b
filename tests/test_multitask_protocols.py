"""DaWinMultiTask's two ways of scoring the task models, against plain computations.

Three tasks with 3, 5 and 8 classes on tiny random open_clip models. The paper's protocol
("evaluated_task_head") scores every task model θ_t through the head of the evaluated task.
"own_head" scores task model t through head t. The references below run the plain task
models θ_t (not the fused stack) and write the entropy out.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dawin_fast import MULTITASK_PROTOCOLS, DaWinMultiTask, DaWinViT, DirichletMixture, task_vectors
from tests.models import interpolate_model, tiny_open_clip_visual

pytestmark = pytest.mark.usefixtures("torch_backend")  # tests/conftest.py

TOL = dict(rtol=1e-4, atol=1e-4)
CLASSES = (3, 5, 8)
T = len(CLASSES)
S = 0.3 * T


def setup():
    pretrained = tiny_open_clip_visual(0)
    tasks = [tiny_open_clip_visual(s) for s in range(1, T + 1)]
    gen = torch.Generator().manual_seed(0)
    heads = [torch.randn(c, 12, generator=gen) * 4 for c in CLASSES]
    encoder = DaWinViT.from_open_clip(task_vectors(pretrained, tasks))
    return pretrained, tasks, heads, encoder


def images(batch, seed=0):
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def plain_entropy(logits):
    log_probs = logits.double().log_softmax(-1)
    return -(log_probs.exp() * log_probs).sum(-1)


@torch.no_grad()
def reference_p(tasks, heads, x, evaluated: int | None):
    """p [B, T] = softmax_t(-H_t): task model t through head ``evaluated`` (the paper's
    protocol), or through its own head t when ``evaluated`` is None."""
    entropies = []
    for t, model in enumerate(tasks):
        head = heads[t] if evaluated is None else heads[evaluated]
        entropies.append(plain_entropy(F.normalize(model(x), dim=-1) @ head.T))
    return torch.softmax(-torch.stack(entropies, dim=1), dim=1).float()


@torch.no_grad()
def test_paper_protocol_scores_every_model_through_the_evaluated_tasks_head():
    """The default where the task is given: p from the evaluated task's head, and the
    logits of every sample's merged model θ_pre + s Σ p_t τ_t through that head."""
    pretrained, tasks, heads, encoder = setup()
    x = images(6)
    dawin = DaWinMultiTask(encoder, heads, mode="per_sample")
    for d in range(T):
        p = reference_p(tasks, heads, x, evaluated=d)
        out = dawin.predict(x, task=d, return_details=True)
        torch.testing.assert_close(out.coefficients[:, 1:], S * p, **TOL)
        assert out.expert_logits.shape == (T, 6, CLASSES[d])
        for b in (d, 5 - d):  # two samples per task: each check builds a merged model
            weights = S * p[b]
            row = torch.cat([(1 - weights.sum()).reshape(1), weights])
            merged = interpolate_model([pretrained, *tasks], row)
            expected = F.normalize(merged(x[b : b + 1]), dim=-1) @ heads[d].T
            torch.testing.assert_close(out.logits[b : b + 1], expected, **TOL)
    assert dawin.protocol_for(0) == "evaluated_task_head"


@torch.no_grad()
def test_own_head_protocol_scores_each_model_through_its_own_head():
    """Named, it applies where the task is given too; without a task it is the default."""
    _, tasks, heads, encoder = setup()
    x = images(6)
    p = reference_p(tasks, heads, x, evaluated=None)
    own = DaWinMultiTask(encoder, heads, mode="per_sample", protocol="own_head")
    for d in range(T):
        out = own.predict(x, task=d, return_details=True)
        torch.testing.assert_close(out.coefficients[:, 1:], S * p, **TOL)
        assert [z.shape[-1] for z in out.expert_logits] == list(CLASSES)
    _, _, unknown, _ = DaWinMultiTask(encoder, heads, mode="per_sample").merge_rows(x)
    torch.testing.assert_close(unknown, p, **TOL)
    # The protocols differ here (else the tests above could not tell them apart).
    assert (reference_p(tasks, heads, x, evaluated=0) - p).abs().max() > 0.05


@torch.no_grad()
def test_mixture_per_dataset_of_the_evaluated_task():
    """calibrate(batches, task=d): a Dirichlet mixture (K components) on the paper-protocol
    p of task d's dataset; every sample of a cluster gets [1, s · component mean]."""
    _, tasks, heads, encoder = setup()
    dataset = [images(8, seed=s) for s in range(3)]
    dawin = DaWinMultiTask(encoder, heads, n_clusters=2, seed=1)
    for d in (0, 2):
        dawin.calibrate(dataset, task=d)
        p = torch.cat([reference_p(tasks, heads, x, evaluated=d) for x in dataset])
        expected = DirichletMixture(n_components=2, seed=1).fit(p.double().numpy())
        torch.testing.assert_close(torch.as_tensor(dawin.mixtures[d].means_),
                                   torch.as_tensor(expected.means_), rtol=1e-4, atol=1e-5)
        out = dawin.predict(dataset[1], task=d, return_details=True)
        labels = torch.as_tensor(expected.predict(p[8:16].double().numpy()))
        assert out.labels.tolist() == labels.tolist()
        means = torch.as_tensor(expected.means_, dtype=torch.float32)[labels]
        torch.testing.assert_close(out.applied[:, 1:], S * means, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.applied[:, 0], torch.ones(8))
    assert sorted(dawin.mixtures) == [0, 2]
    with pytest.raises(ValueError, match=r"calibrated for task 0, task 2, not for task 1; "
                                         r"calibrate on a dataset of it \(calibrate\(batches, "
                                         r"task=1\)\)"):
        dawin.predict(dataset[0], task=1)


@torch.no_grad()
def test_an_evaluations_own_head_and_module_heads():
    """``head=``: every task model through that head (e.g. the zero-shot head an evaluation
    builds); a head given as a module is applied to the features as they are."""
    _, tasks, heads, encoder = setup()
    x = images(5)
    other = torch.randn(4, 12, generator=torch.Generator().manual_seed(9)) * 4
    dawin = DaWinMultiTask(encoder, heads, mode="per_sample")
    _, _, p, expert = dawin.merge_rows(x, task=1, head=other)
    assert expert.shape == (T, 5, 4)
    torch.testing.assert_close(p, reference_p(tasks, [other] * T, x, evaluated=0), **TOL)

    class Normalized(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

        def forward(self, features):
            return F.normalize(features, dim=-1) @ self.weight.T

    modules = DaWinMultiTask(encoder, [Normalized(h) for h in heads], normalize=False,
                             mode="per_sample")
    torch.testing.assert_close(modules.predict(x, task=2),
                               dawin.predict(x, task=2), rtol=1e-5, atol=1e-5)


def test_protocol_errors_are_one_line_before_any_work():
    _, _, heads, encoder = setup()
    x = images(2)
    assert MULTITASK_PROTOCOLS == ("evaluated_task_head", "own_head")
    with pytest.raises(ValueError, match=r"protocol must be one of \('evaluated_task_head', "
                                         r"'own_head'\) or None"):
        DaWinMultiTask(encoder, heads, protocol="paper")
    paper = DaWinMultiTask(encoder, heads, protocol="evaluated_task_head")
    with pytest.raises(ValueError, match="give the task"):
        paper.merge_rows(x)
    with pytest.raises(ValueError, match="give the task"):
        paper.calibrate([x])
    own = DaWinMultiTask(encoder, heads, protocol="own_head")
    with pytest.raises(ValueError, match="own head"):
        own.merge_rows(x, task=0, head=heads[0])
    with pytest.raises(ValueError, match=r"task must be in \[0, 3\), got 3"):
        DaWinMultiTask(encoder, heads).calibrate([x], task=3)
    with pytest.raises(TypeError, match=r"heads\[1\] must be a \[C, D\] tensor"):
        DaWinMultiTask(encoder, [heads[0], torch.randn(12), heads[2]])
