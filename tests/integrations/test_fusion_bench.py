"""The FusionBench plug-in against FusionBench's own classes (tiny random CLIP models,
offline), and the ``fusion_bench`` CLI with our configs. Skipped without fusion_bench
(``pip install -e ".[fusionbench]"``)."""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fusion_bench")

from fusion_bench.method.dawe.warppers.dawe_model import (  # noqa: E402
    DataAdaptiveWeightEnsemblingCLIPVisionModel,
)
from fusion_bench.method.we_moe.we_moe import entropy_loss  # noqa: E402
from fusion_bench.models.sparse_we_moe import SparseWeightEnsemblingMoE  # noqa: E402
from fusion_bench.models.we_moe import WeightEnsemblingMoE  # noqa: E402

import dawin_fast  # noqa: E402
from dawin_fast.integrations.fusion_bench.models import (  # noqa: E402
    FusedDAWEModel,
    FusedWeightEnsemblingMoE,
    fuse_we_moe,
    set_batch_reduce,
    task_arithmetic,
    vision_transformer,
)
from dawin_fast.integrations.fusion_bench.tiny import tiny_clip_vision_model  # noqa: E402
from tests.devices import BACKENDS, backend_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NUM_TASKS = 3


def models():
    return [tiny_clip_vision_model(seed, noise=0.05) for seed in range(NUM_TASKS + 1)]


def fb_moe(cls=WeightEnsemblingMoE, depth=2, batch_first=True, batch_reduce=False, **extra):
    """FusionBench's MoE over layer 1's MLP of the tiny models (gate bias randomised so
    that samples get different weights)."""
    pool = models()
    torch.manual_seed(0)
    moe = cls(hidden_size=32, base_model=pool[0].encoder.layers[1].mlp,
              expert_models=[m.encoder.layers[1].mlp for m in pool[1:]], init_lambda=0.3,
              batch_first=batch_first, router_hidden_layers=depth, batch_reduce=batch_reduce,
              **extra)
    with torch.no_grad():
        for p in moe.gate.parameters():
            p.add_(torch.randn(p.shape) * 0.5)
    return moe


def assert_grads_close(got, expected):
    """fp32 gradients: within 1e-4 of the largest reference gradient of each tensor."""
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


def hidden(batch=5, tokens=7, batch_first=True, seed=1):
    h = torch.randn(batch, tokens, 32, generator=torch.Generator().manual_seed(seed))
    return h if batch_first else h.transpose(0, 1).contiguous()


CASES = {
    "per_sample": dict(),
    "batch_reduce": dict(batch_reduce=True),
    "seq_first": dict(batch_first=False),
    "depth0": dict(depth=0),
    "depth1": dict(depth=1),
    "sparse": dict(cls=SparseWeightEnsemblingMoE, tv_prune_ratio=0.5, layer_idx=1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_fused_we_moe_matches_fusion_bench(case, backend):
    """Outputs to 1e-5 (fp32) and gate gradients, PyTorch path and Triton kernels."""
    moe = fb_moe(**CASES[case])
    fused = FusedWeightEnsemblingMoE.from_fusion_bench(moe)
    assert fused.gate is moe.gate  # FusionBench's gate, its parameters
    h = hidden(batch_first=moe.batch_first)
    expected = moe(h)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, list(moe.gate.parameters()), grad_out)

    device = backend_device(backend)
    fused = fused.to(device)
    with dawin_fast.use_backend(backend):
        got = fused(h.to(device))
        grads = torch.autograd.grad(got, list(fused.gate.parameters()), grad_out.to(device))
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5)
    assert_grads_close(grads, expected_grads)


def test_fuse_we_moe_swaps_every_layer_and_set_batch_reduce_reaches_them():
    model = torch.nn.Sequential(fb_moe(), torch.nn.ReLU(), fb_moe(batch_reduce=True))
    fused = fuse_we_moe(model)
    kinds = [type(m).__name__ for m in fused]
    assert kinds == ["FusedWeightEnsemblingMoE", "ReLU", "FusedWeightEnsemblingMoE"]
    assert set_batch_reduce(fused, False) == 2
    assert not fused[2].batch_reduce


def test_per_sample_output_does_not_depend_on_the_batch():
    """With batch_reduce off (what our algorithms evaluate with), a sample's output is
    the same alone and within a batch; with it on (FusionBench's leftover), it is not."""
    fused = FusedWeightEnsemblingMoE.from_fusion_bench(fb_moe(batch_reduce=True))
    h = hidden()
    with torch.no_grad():
        reduced = fused(h)[:1]
        set_batch_reduce(fused, False)
        torch.testing.assert_close(fused(h)[:1], fused(h[:1]), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(reduced, fused(h[:1]), atol=1e-4)


def test_test_time_adaptation_gives_fusion_bench_gates():
    """A few Adam steps of FusionBench's entropy loop on its MoE and on ours, from the
    same gates and batches, end with the same gates."""
    torch.manual_seed(3)
    head = torch.randn(6, 32)
    batches = [hidden(batch=4, seed=10 + s) for s in range(4)]

    def adapt(module):
        optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad],
                                     lr=1e-2)
        for h in batches:
            loss = entropy_loss(module(h).mean(dim=1) @ head.t())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return [p.detach().clone() for p in module.gate.parameters()]

    moe = fb_moe()
    fused = FusedWeightEnsemblingMoE.from_fusion_bench(copy.deepcopy(moe))
    for a, b in zip(adapt(moe), adapt(fused), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


class _FixedDAWE(DataAdaptiveWeightEnsemblingCLIPVisionModel):
    """FusionBench's DAWE model with its task-wise merge made callable: 0.2.33 passes the
    coding tensor where ``state_dict_weighted_sum`` requires a list (TypeError, see
    ``test_fusion_bench_dawe_task_wise_raises``). Everything else is theirs."""

    def compute_task_vectors(self, coding_weights):
        from fusion_bench.utils.state_dict_arithmetic import state_dict_weighted_sum

        return state_dict_weighted_sum(
            [tv.state_dict(keep_vars=True) for tv in self.task_vectors], list(coding_weights))


def test_fusion_bench_dawe_task_wise_raises():
    pool = models()
    model = DataAdaptiveWeightEnsemblingCLIPVisionModel(
        merge_mode="task_wise", hidden_size=12, dict_processor=None, model_processor=None,
        dict_feature_extractor=torch.nn.Sequential(torch.nn.Flatten(),
                                                   torch.nn.Linear(3 * 16 * 16, 12)),
        base_model=pool[0], expert_models=pool[1:], task_vector_dtype=None,
        task_vector_sparsity=0, gate_hidden_layers=1, batch_reduce=True)
    with pytest.raises(TypeError, match="must be a list or tuple"):
        model(torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_dawe_matches_fusion_bench(backend):
    """Task-wise DAWE: FusionBench's per-sample functional_call loop vs one fused pass."""
    pool = models()
    torch.manual_seed(4)
    extractor = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 12))
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    fused = FusedDAWEModel.build(copy.deepcopy(pool[0]), [copy.deepcopy(m) for m in pool[1:]],
                                 copy.deepcopy(extractor), 12, gate_hidden_layers=1,
                                 batch_reduce=False)
    with torch.no_grad():
        for p in fused.gate.parameters():
            p.add_(torch.randn(p.shape) * 0.5)
    reference = _FixedDAWE(
        merge_mode="task_wise", hidden_size=12, dict_processor=None, model_processor=None,
        collate_fn=lambda outs: torch.cat([o.pooler_output for o in outs]),
        dict_feature_extractor=extractor, base_model=pool[0], expert_models=pool[1:],
        task_vector_dtype=None, task_vector_sparsity=0, gate_hidden_layers=1,
        batch_reduce=False)
    reference.gate.load_state_dict(fused.gate.state_dict())
    expected = reference(images)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, list(reference.gate.parameters()), grad_out)

    device = backend_device(backend)
    fused = fused.to(device)
    with dawin_fast.use_backend(backend):
        got = fused(images.to(device)).pooler_output
        grads = torch.autograd.grad(got, list(fused.gate.parameters()), grad_out.to(device))
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5)
    assert_grads_close(grads, expected_grads)


# ------------------------------------------------------- FusionBench 0.2.33 behaviours


def test_fusion_bench_task_arithmetic_merge_raises_and_ours_merges():
    from fusion_bench.method.task_arithmetic.task_arithmetic import task_arithmetic_merge

    pool = models()
    with pytest.raises(TypeError, match="Tensor type mismatch"):
        task_arithmetic_merge(copy.deepcopy(pool[0]), pool[1:], 0.3)
    merged = task_arithmetic(copy.deepcopy(pool[0]), pool[1:], 0.3)
    name = "encoder.layers.0.mlp.fc1.weight"
    states = [m.state_dict()[name] for m in pool]
    expected = states[0] + 0.3 * sum(s - states[0] for s in states[1:])
    torch.testing.assert_close(merged.state_dict()[name], expected)


def test_clip_vision_model_layout_is_handled():
    model = tiny_clip_vision_model()
    if not hasattr(model, "vision_model"):  # transformers 5: FusionBench's access fails
        with pytest.raises(AttributeError):
            model.vision_model  # noqa: B018
    assert vision_transformer(model).encoder is not None


# ------------------------------------------------------------------------------- CLI


def run_cli(*overrides, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="1")
    cli = Path(sys.executable).with_name("fusion_bench")
    # The console script, or its module where this venv layers on another's packages.
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "fusion_bench.scripts.cli"]
    return subprocess.run([*command, *overrides, "print_config=false",
                           f"path.log_dir={tmp_path}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def doc_command(method: str, containing: str = "") -> list[str]:
    """The ``fusion_bench method=dawin_fast/<method> ...`` command of docs/fusionbench.md
    (with its backslash continuations) that contains ``containing``, as the shell would
    split it."""
    text = (ROOT / "docs" / "fusionbench.md").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()
             if line.strip().startswith(f"fusion_bench method=dawin_fast/{method} ")
             and containing in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])[1:]


@pytest.mark.parametrize("method", ["clip_we_moe", "clip_dawe"])
def test_cli_smoke_run(method, tmp_path):
    """The command of docs/fusionbench.md (and the same with DAWE): our method, the tiny
    pool built from configs, the dummy task pool (which reports what the method returned)."""
    overrides = doc_command("clip_we_moe")
    overrides[0] = f"method=dawin_fast/{method}"
    result = run_cli(*overrides, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "trainable_params" in result.stdout


def test_dawin_algorithm_matches_dawin_multitask():
    """The model the DaWin algorithm returns = DaWinMultiTask's merged pass."""
    from fusion_bench.modelpool import CLIPVisionModelPool
    from omegaconf import OmegaConf

    from dawin_fast.integrations.fusion_bench.algorithms import DaWinForCLIP
    from tests.integrations.fixtures import random_heads

    target = "dawin_fast.integrations.fusion_bench.tiny.tiny_clip_vision_model"
    names = ["_pretrained_", "task_a", "task_b", "task_c"]
    pool = CLIPVisionModelPool(OmegaConf.create(
        {n: {"_target_": target, "seed": i, "noise": 0.05} for i, n in enumerate(names)}))
    heads = OmegaConf.create({"_target_": "tests.integrations.fixtures.random_heads",
                              "tasks": names[1:]})
    model = DaWinForCLIP(heads=heads).run(pool)
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    out = model(images)
    # Reference: per-sample rows [1, s p] from each task model's entropy on its head.
    plain = models()
    head = random_heads(names[1:])
    h = []
    for t, name in enumerate(names[1:]):
        logits = torch.nn.functional.normalize(plain[t + 1](images).pooler_output, dim=-1) \
            @ head[name].t()
        h.append(dawin_fast.entropy(logits))
    p = torch.softmax(-torch.stack(h), dim=0).t()
    rows = torch.cat([torch.ones(5, 1), 0.3 * NUM_TASKS * p], dim=1)
    stack = dawin_fast.task_vectors(plain[0], plain[1:])
    expected = dawin_fast.dawinize(stack)(images, rows).pooler_output
    torch.testing.assert_close(out.pooler_output, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the bug shows on CPU-only machines")
def test_fusion_bench_we_moe_adaptation_fails_without_cuda():
    """FusionBench's WEMoE algorithm makes no Fabric without CUDA, then calls
    ``self._fabric.backward``; ours adapts on a CPU (see the next test)."""
    from fusion_bench.method.we_moe.clip_we_moe import CLIPWeightEnsemblingMoEAlgorithm
    from omegaconf import OmegaConf

    algorithm = CLIPWeightEnsemblingMoEAlgorithm(OmegaConf.create(dict(
        optimizer="adam", lr=1e-4, max_steps=1, use_grad_accumulate=True)))
    assert algorithm._fabric is None
    algorithm.on_test_time_adaptation_start = lambda: None
    algorithm.modelpool = type("Pool", (), {"model_names": ["t"]})()
    algorithm.get_shuffled_test_loader_iter = lambda task: iter([(torch.randn(2, 4), None)])
    algorithm.compute_logits = lambda module, batch, task: module(batch[0])
    with pytest.raises(AttributeError, match="backward"):
        algorithm.test_time_adaptation(torch.nn.Linear(4, 3))


def test_our_we_moe_algorithm_adapts_gates_on_cpu():
    """Our algorithm's test-time adaptation (FusionBench's data and logits hooks replaced
    by tiny ones) runs on a CPU and moves the gates."""
    from fusion_bench.modelpool import CLIPVisionModelPool
    from omegaconf import OmegaConf

    from dawin_fast.integrations.fusion_bench.algorithms import FusedCLIPWeightEnsemblingMoE

    target = "dawin_fast.integrations.fusion_bench.tiny.tiny_clip_vision_model"
    names = ["_pretrained_", "task_a", "task_b"]
    pool = CLIPVisionModelPool(OmegaConf.create(
        {n: {"_target_": target, "seed": i} for i, n in enumerate(names)}))
    algorithm = FusedCLIPWeightEnsemblingMoE(max_steps=2, lr=1e-2, batch_size=3)
    algorithm.whether_setup_zero_shot_classification_head = True
    head = torch.randn(4, 32)
    algorithm.get_shuffled_test_loader_iter = lambda task, **kw: iter(
        [(torch.randn(3, 3, 16, 16), None)] * 2)
    algorithm.compute_logits = lambda module, images, task: module(images)[1] @ head.t()
    algorithm.modelpool = pool
    model = algorithm.construct_moe_model(pool)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    model = algorithm.test_time_adaptation(
        model, [p for p in model.parameters() if p.requires_grad])
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
