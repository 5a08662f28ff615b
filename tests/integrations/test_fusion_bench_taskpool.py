"""clip_dawin evaluated by FusionBench's CLIP classification task pools, on the tiny pools
(offline): ours (the paper's protocol) and FusionBench's own (each model's own head).

Every reported accuracy and loss is checked against a direct evaluation written out here:
plain task models (not the fused stack), the task pool's zero-shot head computed from the
tiny CLIP text model, p = softmax_t(-H_t), and per sample the state dict
θ_pre + s Σ_t p_t (θ_t - θ_pre) run as an ordinary model. Skipped without fusion_bench.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fusion_bench")

from fusion_bench.modelpool import CLIPVisionModelPool  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from dawin_fast import DirichletMixture  # noqa: E402
from dawin_fast.integrations.fusion_bench.algorithms import DaWinForCLIP  # noqa: E402
from dawin_fast.integrations.fusion_bench.tiny import (  # noqa: E402
    TINY_TEMPLATES,
    TinyCLIPProcessor,
    tiny_class_names,
    tiny_classification_dataset,
    tiny_clip_model,
    tiny_clip_vision_model,
    tiny_heads,
)
from tests.integrations.test_fusion_bench import doc_command, run_cli  # noqa: E402
from tests.models import interpolate_model  # noqa: E402

# The PyTorch path: these tests check what the task pools report (the kernels have their
# own tests, and the interpreter would make each evaluation minutes long).
pytestmark = pytest.mark.usefixtures("torch_backend")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "dawin_fast" / "integrations" / "fusion_bench" / "config"
TASKS = ["task_a", "task_b", "task_c"]
SEEDS = {"task_a": 1, "task_b": 2, "task_c": 3}  # the tiny task pool's dataset seeds
S = 0.3 * len(TASKS)


def batch_size():
    config = OmegaConf.load(CONFIG / "taskpool" / "dawin_fast" / "tiny_clip_classification.yaml")
    return config.dataloader_kwargs.batch_size


def report_loss(logits, y):
    """The loss FusionBench's task pool reports: the mean over its batches of each batch's
    mean cross-entropy."""
    size = batch_size()
    losses = [F.cross_entropy(logits[i : i + size], y[i : i + size]).item()
              for i in range(0, len(y), size)]
    return sum(losses) / len(losses)


def plain_entropy(logits):
    log_probs = logits.double().log_softmax(-1)
    return -(log_probs.exp() * log_probs).sum(-1)


@torch.no_grad()
def zero_shot_weight(clip, task):
    """scale · [C, D]: per class, the mean of its normalised template embeddings, normalised."""
    processor = TinyCLIPProcessor()
    rows = []
    for name in tiny_class_names(task):
        inputs = processor(text=[t(name) for t in TINY_TEMPLATES])
        text = clip.text_model(**inputs).pooler_output
        text = F.normalize(clip.text_projection(text), dim=-1).mean(0)
        rows.append(F.normalize(text, dim=-1))
    return clip.logit_scale.exp() * torch.stack(rows)


@torch.no_grad()
def direct_evaluation(protocol, mode="per_sample", n_clusters=3):
    """{task: (accuracy, loss)} of the merged model, the task models scored through the
    evaluated task's zero-shot head ("paper") or through their own ``tiny_heads`` head on
    the pooled features ("own")."""
    clip = tiny_clip_model()
    models = [tiny_clip_vision_model(s) for s in range(len(TASKS) + 1)]
    own = tiny_heads(TASKS)

    def zero_shot(pooled, weight):
        return F.normalize(clip.visual_projection(pooled), dim=-1) @ weight.t()

    results = {}
    for task in TASKS:
        data = tiny_classification_dataset(task, seed=SEEDS[task])
        x, y = data.images, torch.tensor(data.labels)
        weight = zero_shot_weight(clip, task)
        entropies = []
        for t, model in enumerate(models[1:]):
            pooled = model(x).pooler_output
            logits = zero_shot(pooled, weight) if protocol == "paper" else \
                F.normalize(pooled, dim=-1) @ own[TASKS[t]].t()
            entropies.append(plain_entropy(logits))
        p = torch.softmax(-torch.stack(entropies, dim=1), dim=1).float().double()
        if mode == "mixture":  # fitted on the task's whole test set
            mixture = DirichletMixture(n_components=n_clusters, seed=0).fit(p.numpy())
            p = torch.as_tensor(mixture.means_)[mixture.predict(p.numpy())]
        logits = []
        for b in range(len(y)):
            weights = S * p[b].float()
            row = torch.cat([(1 - weights.sum()).reshape(1), weights])
            pooled = interpolate_model(models, row)(x[b : b + 1]).pooler_output
            logits.append(zero_shot(pooled, weight))
        logits = torch.cat(logits)
        accuracy = (logits.argmax(-1) == y).float().mean().item()
        results[task] = (accuracy, report_loss(logits, y))
    return results


def tiny_pool():
    names = ["_pretrained_", *TASKS]
    target = "dawin_fast.integrations.fusion_bench.tiny.tiny_clip_vision_model"
    return CLIPVisionModelPool(OmegaConf.create(
        {n: {"_target_": target, "seed": i} for i, n in enumerate(names)}))


def tiny_taskpool(target=None):
    config = OmegaConf.load(CONFIG / "taskpool" / "dawin_fast" / "tiny_clip_classification.yaml")
    if target is not None:
        config._target_ = target
    return instantiate(config, _recursive_=False)


def heads_config():
    return OmegaConf.create({"_target_": "dawin_fast.integrations.fusion_bench.tiny.tiny_heads",
                             "tasks": TASKS})


def assert_report_matches(report, expected):
    for task in TASKS:
        accuracy, loss = expected[task]
        assert report[task]["accuracy"] == pytest.approx(accuracy, abs=1e-6), task
        assert report[task]["loss"] == pytest.approx(loss, rel=1e-4, abs=1e-5), task
    average = sum(expected[t][0] for t in TASKS) / len(TASKS)
    assert report["average"]["accuracy"] == pytest.approx(average, abs=1e-6)


def test_documented_tiny_command_reports_the_paper_protocol_accuracies(tmp_path, monkeypatch):
    """The tiny command of docs/fusionbench.md (per-sample DaWin): per-task accuracies and
    their average, each equal to the direct evaluation under the paper's protocol."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the CLI on the PyTorch path
    overrides = doc_command("clip_dawin", "dawin_fast/tiny_clip_classification")
    assert any(o.startswith("+method.heads._target_=") for o in overrides)  # Hydra's '+'
    result = run_cli(*overrides, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    expected = direct_evaluation("paper")
    assert_report_matches(report, expected)
    for task in TASKS:  # what it prints
        assert re.search(rf"^{task}:\n  accuracy: ", result.stdout, re.MULTILINE)
    assert re.search(r"^average:\n  accuracy: ", result.stdout, re.MULTILINE)
    # Own heads give other numbers here: the check above tells the protocols apart.
    own = direct_evaluation("own")
    assert max(abs(own[t][1] - expected[t][1]) for t in TASKS) > 1e-3


def test_mixture_is_fitted_per_task_on_its_test_set():
    model = DaWinForCLIP(mode="mixture", n_clusters=2, heads=heads_config()).run(tiny_pool())
    report = tiny_taskpool().evaluate(model)
    assert_report_matches(report, direct_evaluation("paper", "mixture", n_clusters=2))
    assert model.protocol == "own_head" and not model.dawin.mixtures  # reset after each task


def test_fusion_bench_task_pool_scores_own_heads_and_says_so(caplog):
    """FusionBench's own task pool does not tell the model the task: own heads, logged."""
    model = DaWinForCLIP(heads=heads_config()).run(tiny_pool())
    taskpool = tiny_taskpool("fusion_bench.taskpool.CLIPVisionModelTaskPool")
    with caplog.at_level(logging.WARNING):
        report = taskpool.evaluate(model)
    assert_report_matches(report, direct_evaluation("own"))
    said = [r.getMessage() for r in caplog.records if "protocol 'own_head'" in r.getMessage()]
    assert len(said) == 1 and "dawin_fast/clip-vit-classification_TA8" in said[0]



@torch.no_grad()
def test_one_task_pool_is_the_two_model_dawin_through_the_task_pools_head():
    """A pool of one task model: λ = e^{-H_1} / (e^{-H_0} + e^{-H_1}) with θ_pre and θ_1
    both through the evaluated task's zero-shot head, then (1 - λ) θ_pre + λ θ_1."""
    pool = CLIPVisionModelPool(OmegaConf.create({
        n: {"_target_": "dawin_fast.integrations.fusion_bench.tiny.tiny_clip_vision_model",
            "seed": i} for i, n in enumerate(["_pretrained_", "task_a"])}))
    heads = OmegaConf.create({"_target_": "dawin_fast.integrations.fusion_bench.tiny."
                                          "tiny_heads", "tasks": ["task_a"]})
    model = DaWinForCLIP(heads=heads).run(pool)
    taskpool = tiny_taskpool()
    taskpool._test_datasets = {"task_a": taskpool._test_datasets["task_a"]}
    report = taskpool.evaluate(model)

    clip = tiny_clip_model()
    models = [tiny_clip_vision_model(0), tiny_clip_vision_model(1)]
    data = tiny_classification_dataset("task_a", seed=SEEDS["task_a"])
    x, y = data.images, torch.tensor(data.labels)
    weight = zero_shot_weight(clip, "task_a")

    def zero_shot(pooled):
        return F.normalize(clip.visual_projection(pooled), dim=-1) @ weight.t()

    h = [plain_entropy(zero_shot(m(x).pooler_output)) for m in models]
    lam = torch.sigmoid(h[0] - h[1]).float()
    logits = torch.cat([zero_shot(interpolate_model(models, [1 - lam[b], lam[b]])(
        x[b : b + 1]).pooler_output) for b in range(len(y))])
    assert report["task_a"]["accuracy"] == pytest.approx(
        (logits.argmax(-1) == y).float().mean().item(), abs=1e-6)
    assert report["task_a"]["loss"] == pytest.approx(report_loss(logits, y), rel=1e-4,
                                                     abs=1e-5)

def test_ta8_task_pool_is_fusion_bench_s_with_our_class(tmp_path):
    """The 8-task config composes to FusionBench's clip-vit-classification_TA8 but for the
    class (compared as composed by the CLI; nothing is downloaded)."""
    composed = {}
    for taskpool in ("CLIPVisionModelTaskPool/clip-vit-classification_TA8",
                     "dawin_fast/clip-vit-classification_TA8"):
        result = run_cli("--cfg", "job", "method=dawin_fast/clip_dawin",
                         "modelpool=CLIPVisionModelPool/clip-vit-base-patch32_TA8",
                         f"taskpool={taskpool}", tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        composed[taskpool] = OmegaConf.create(result.stdout).taskpool
    ours = composed["dawin_fast/clip-vit-classification_TA8"]
    theirs = composed["CLIPVisionModelTaskPool/clip-vit-classification_TA8"]
    assert ours._target_ == "dawin_fast.integrations.fusion_bench.taskpool." \
                           "DaWinCLIPVisionModelTaskPool"
    ours._target_ = theirs._target_
    assert OmegaConf.to_container(ours) == OmegaConf.to_container(theirs)
    assert list(theirs.test_datasets) == ["sun397", "stanford-cars", "resisc45", "eurosat",
                                          "svhn", "gtsrb", "mnist", "dtd"]


# ------------------------------------------------------- FusionBench 0.2.33 behaviours


def test_fusion_bench_clip_task_pool_needs_the_alias_under_transformers_5():
    """Without ``compat.alias_clip_vision_transformer``, FusionBench's CLIP task pool module
    fails on import where transformers has no ``CLIPVisionTransformer`` (transformers 5)."""
    import subprocess
    import sys

    code = ("import sys, transformers.models.clip.modeling_clip as clip\n"
            "if hasattr(clip, 'CLIPVisionTransformer'): sys.exit(3)\n"
            "import fusion_bench.taskpool.clip_vision.taskpool")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    if result.returncode == 3:
        pytest.skip("this transformers has its own CLIPVisionTransformer")
    assert result.returncode != 0
    assert "cannot import name 'CLIPVisionTransformer'" in result.stderr


def test_fusion_bench_register_dataset_forms_fail():
    """Why the tiny task pool writes the factory's table itself."""
    from fusion_bench.tasks.clip_classification import CLIPTemplateFactory

    with pytest.raises(AssertionError, match="both `classnames` and `templates`"):
        CLIPTemplateFactory.register_dataset("tiny_x", dataset_info={"classnames": ["a"],
                                                                    "templates": TINY_TEMPLATES})
    CLIPTemplateFactory.register_dataset("tiny_y", classnames=["a"], templates=TINY_TEMPLATES)
    try:
        with pytest.raises(KeyError, match="templates"):
            CLIPTemplateFactory.get_classnames_and_templates("tiny_y")
    finally:
        CLIPTemplateFactory._dataset_mapping.pop("tiny_y")
    tiny_classification_dataset("task_b")
    assert CLIPTemplateFactory.get_classnames_and_templates("task_b")[0] == \
        tiny_class_names("task_b")
