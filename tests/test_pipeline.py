"""The DaWin pipeline end to end on tiny open_clip models, against explicit references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dawin_fast import (
    TEMPERATURES,
    BetaMixture,
    DaWin,
    DaWinClassifier,
    DaWinMultiTask,
    DaWinViT,
    entropy,
    task_vectors,
)
from tests.models import interpolate_model, tiny_open_clip_visual

TOL = dict(rtol=1e-4, atol=1e-4)
NUM_CLASSES = 6


pytestmark = pytest.mark.usefixtures("torch_backend")  # tests/conftest.py


def setup(num_models=2, seed=0):
    visuals = [tiny_open_clip_visual(s) for s in range(num_models)]
    gen = torch.Generator().manual_seed(seed)
    heads = [torch.randn(NUM_CLASSES, 12, generator=gen) * 3 for _ in range(num_models)]
    classifier = DaWinClassifier(DaWinViT.from_open_clip(visuals), heads)
    return visuals, heads, classifier


def reference_logits(visuals, heads, row, x):
    """The classifier whose every parameter (heads too) is interpolated with ``row``."""
    features = F.normalize(interpolate_model(visuals, row)(x), dim=-1)
    head = sum(float(c) * h for c, h in zip(row, heads, strict=True))
    return features @ head.T


def images(batch, seed=0):
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_expert_pass_gives_each_models_own_logits():
    visuals, heads, classifier = setup(3)
    x = images(5)
    expert = DaWin(classifier).expert_logits(x)
    assert expert.shape == (3, 5, NUM_CLASSES)
    for i in range(3):
        row = torch.eye(3)[i]
        torch.testing.assert_close(expert[i], reference_logits(visuals, heads, row, x), **TOL)


@torch.no_grad()
def test_per_sample_mode_is_exact_dawin():
    visuals, heads, classifier = setup(2)
    x = images(6)
    temps = (0.9, 1.1)
    out = DaWin(classifier, temperatures=temps, mode="per_sample").predict(x, return_details=True)
    z0 = reference_logits(visuals, heads, torch.tensor([1.0, 0.0]), x)
    z1 = reference_logits(visuals, heads, torch.tensor([0.0, 1.0]), x)
    lam = torch.exp(-entropy(z1, temps[1])) / (
        torch.exp(-entropy(z0, temps[0])) + torch.exp(-entropy(z1, temps[1])))
    torch.testing.assert_close(out.coefficients[:, 1], lam, **TOL)
    assert out.labels is None and torch.equal(out.applied, out.coefficients)
    for b in range(6):
        expected = reference_logits(visuals, heads, out.coefficients[b], x[b : b + 1])
        torch.testing.assert_close(out.logits[b : b + 1], expected, **TOL)


@torch.no_grad()
def test_mixture_mode_uses_component_means():
    visuals, heads, classifier = setup(2)
    x = images(12)
    dawin = DaWin(classifier, n_clusters=3, mode="mixture")
    out = dawin.predict(x, return_details=True)
    lam = out.coefficients[:, 1]
    mixture = BetaMixture(n_components=3, seed=0).fit(lam)
    labels = torch.as_tensor(mixture.predict(lam))
    assert torch.equal(out.labels, labels)
    means = torch.as_tensor(mixture.means_, dtype=torch.float32)
    torch.testing.assert_close(out.applied[:, 1], means[labels])
    for b in range(12):
        expected = reference_logits(visuals, heads, out.applied[b], x[b : b + 1])
        torch.testing.assert_close(out.logits[b : b + 1], expected, **TOL)
    torch.testing.assert_close(dawin(x), out.logits)


@torch.no_grad()
def test_static_modes_are_wise_ft():
    visuals, heads, classifier = setup(2)
    x = images(4)
    for mode, row in ((0.3, torch.tensor([0.7, 0.3])), ([0.5, 0.5], torch.tensor([0.5, 0.5]))):
        got = DaWin(classifier, mode=mode).predict(x)
        torch.testing.assert_close(got, reference_logits(visuals, heads, row, x), **TOL)


@torch.no_grad()
def test_small_batch_falls_back_to_per_sample():
    _, _, classifier = setup(2)
    out = DaWin(classifier, n_clusters=3).predict(images(3), return_details=True)
    assert out.labels is None and torch.equal(out.applied, out.coefficients)


@torch.no_grad()
def test_calibrated_mixture_and_offset_are_reused_per_batch():
    _, _, classifier = setup(2)
    batches = [images(8, seed) for seed in range(3)]
    dawin = DaWin(classifier, n_clusters=2, offset_adjustment=True).calibrate(batches)
    assert dawin.mixture is not None and dawin.offset is not None
    b, w = dawin.offset
    out = dawin.predict(batches[0], return_details=True)
    h = torch.stack([entropy(z) for z in out.expert_logits])
    expected_lam = (torch.exp(-h[1]) + b / w) / (torch.exp(-h[0]) + torch.exp(-h[1]) + b)
    torch.testing.assert_close(out.coefficients[:, 1], expected_lam, **TOL)
    assert torch.equal(out.labels, torch.as_tensor(dawin.mixture.predict(out.coefficients[:, 1])))
    # A batch of two still uses the calibrated 2-component mixture, not a per-batch fit.
    assert dawin.predict(batches[1][:2], return_details=True).labels is not None


@torch.no_grad()
def test_many_models_use_a_dirichlet_mixture():
    _, _, classifier = setup(3)
    out = DaWin(classifier, n_clusters=2).predict(images(10), return_details=True)
    torch.testing.assert_close(out.coefficients.sum(1), torch.ones(10))
    assert out.labels is not None and out.applied.shape == (10, 3)


@torch.no_grad()
def test_multitask_task_arithmetic():
    pretrained = tiny_open_clip_visual(0)
    tasks = [tiny_open_clip_visual(s) for s in (1, 2, 3)]
    encoder = DaWinViT.from_open_clip(task_vectors(pretrained, tasks))
    gen = torch.Generator().manual_seed(0)
    heads = [torch.randn(c, 12, generator=gen) * 3 for c in (4, 5, 6)]  # classes differ
    x = images(5)
    # Own heads (tests/test_multitask_protocols.py covers the evaluated task's head).
    dawin = DaWinMultiTask(encoder, heads, mode="per_sample", protocol="own_head")
    expert = dawin.expert_logits(x)
    for t in range(3):  # θ_pre + τ_t is task model t
        features = F.normalize(tasks[t](x), dim=-1)
        torch.testing.assert_close(expert[t], features @ heads[t].T, **TOL)
    out = dawin.predict(x, task=1, return_details=True)
    p = torch.softmax(-torch.stack([entropy(z) for z in expert]), dim=0).t()
    torch.testing.assert_close(out.applied[:, 1:], 0.9 * p, **TOL)  # s = 0.3 * 3
    models = [pretrained, *tasks]
    for b in range(5):
        # θ = θ_pre + s Σ p_t (θ_t - θ_pre): a row over the original models.
        row = torch.cat([1 - out.applied[b, 1:].sum(0, keepdim=True), out.applied[b, 1:]])
        features = F.normalize(interpolate_model(models, row)(x[b : b + 1]), dim=-1)
        torch.testing.assert_close(out.logits[b : b + 1], features @ heads[1].T, **TOL)
    clustered = DaWinMultiTask(encoder, heads, n_clusters=2).predict(x, task=0,
                                                                      return_details=True)
    assert clustered.labels is not None


def test_bad_configuration_raises():
    _, heads, classifier = setup(2)
    with pytest.raises(ValueError, match="mode must be"):
        DaWin(classifier, mode="fast")
    with pytest.raises(ValueError, match="temperatures must be 2"):
        DaWin(classifier, temperatures=(1.0,))
    with pytest.raises(ValueError, match="offset_adjustment"):
        DaWin(classifier, offset_adjustment=True, expertise="max_logit")
    with pytest.raises(ValueError, match="expertise"):
        DaWin(classifier, expertise="margin")
    with pytest.raises(ValueError, match="fixed mode"):
        DaWin(classifier, mode=[0.2, 0.3, 0.5])
    with pytest.raises(TypeError, match="GroupedModel"):
        DaWin(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="calibrate: no batches"):
        DaWin(classifier).calibrate([])
    with pytest.raises(ValueError, match="needs 1 heads"):
        DaWinMultiTask(classifier.encoder, heads)
    multi = DaWinMultiTask(classifier.encoder, heads[:1])
    with pytest.raises(ValueError, match="task must be"):
        multi.predict(images(2), task=1)


@torch.no_grad()
def test_temperatures_by_model_name_as_coefficients_two_takes():
    """``temperatures="ViT-B-32"``: the authors' pair, the same as passing it."""
    _, _, classifier = setup(2)
    x = images(4)
    by_name = DaWin(classifier, temperatures="ViT-B-32", mode="per_sample")
    assert by_name.temperatures == list(TEMPERATURES["ViT-B-32"])
    expected = DaWin(classifier, temperatures=TEMPERATURES["ViT-B-32"], mode="per_sample")
    torch.testing.assert_close(by_name.predict(x), expected.predict(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"known: \['ViT-B-16', 'ViT-B-32', 'ViT-L-14'\]"):
        DaWin(classifier, temperatures="ViT-B-99")
    with pytest.raises(ValueError, match="for two models"):
        DaWin(setup(3)[2], temperatures="ViT-B-32")
    with pytest.raises(ValueError, match="positive numbers or a model name"):
        DaWin(classifier, temperatures=["hot", "cold"])
    with pytest.raises(ValueError, match="one per task"):
        DaWinMultiTask(classifier.encoder, [torch.randn(3, 12)], temperatures="ViT-B-32")
