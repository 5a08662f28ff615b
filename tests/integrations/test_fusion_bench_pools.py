"""Our FusionBench algorithms against the pools a user may give them: one task model,
models of other architectures, no CLIP text model, one in-memory pool run twice.
Skipped without fusion_bench."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fusion_bench")

from fusion_bench.modelpool import CLIPVisionModelPool  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import dawin_fast  # noqa: E402
from dawin_fast.integrations.fusion_bench.algorithms import (  # noqa: E402
    DaWinForCLIP,
    FusedCLIPDataAdaptiveWeightEnsembling,
    FusedCLIPWeightEnsemblingMoE,
)
from dawin_fast.integrations.fusion_bench.tiny import (  # noqa: E402
    tiny_clip_vision_model,
    tiny_heads,
)

TINY = "dawin_fast.integrations.fusion_bench.tiny.tiny_clip_vision_model"
HEADS = "dawin_fast.integrations.fusion_bench.tiny.tiny_heads"


def config_pool(num_tasks: int, processor=None) -> CLIPVisionModelPool:
    names = ["_pretrained_"] + [f"task_{i}" for i in range(num_tasks)]
    models = {n: {"_target_": TINY, "seed": i, "noise": 0.05} for i, n in enumerate(names)}
    return CLIPVisionModelPool(OmegaConf.create(models), processor=processor)


def heads_config(tasks):
    return OmegaConf.create({"_target_": HEADS, "tasks": list(tasks)})


def images(batch=8, seed=6):
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


METHODS = {
    "clip_we_moe": lambda tasks: FusedCLIPWeightEnsemblingMoE(),
    "clip_dawe": lambda tasks: FusedCLIPDataAdaptiveWeightEnsembling(),
    "clip_dawin": lambda tasks: DaWinForCLIP(heads=heads_config(tasks)),
}


@pytest.mark.parametrize("mode", ["mixture", "per_sample"])
def test_clip_dawin_with_one_task_is_the_two_model_dawin(mode):
    """A pool of 2: λ per sample from the pretrained and the fine-tuned model's entropies
    (both through the task's head), a Beta mixture on λ in mixture mode."""
    model = DaWinForCLIP(mode=mode, heads=heads_config(["task_0"])).run(config_pool(1))
    x = images()
    out = model(x).pooler_output

    plain = [tiny_clip_vision_model(s, noise=0.05) for s in range(2)]
    head = tiny_heads(["task_0"])["task_0"]
    with torch.no_grad():
        h = [dawin_fast.entropy(torch.nn.functional.normalize(m(x).pooler_output, dim=-1)
                                @ head.t()) for m in plain]
    lam = torch.sigmoid(h[0] - h[1])  # e^{-H_1} / (e^{-H_0} + e^{-H_1})
    if mode == "mixture":
        mix = dawin_fast.BetaMixture(n_components=3, seed=0).fit(lam.double().numpy())
        assert len(set(mix.predict(lam.double().numpy()).tolist())) > 1
        lam = torch.as_tensor(mix.means_, dtype=torch.float32)[mix.predict(lam.double().numpy())]
    rows = torch.stack([1 - lam, lam], dim=1)
    with torch.no_grad():
        expected = dawin_fast.dawinize(plain)(x, rows).pooler_output
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_clip_dawin_with_one_task_refuses_a_scale():
    with pytest.raises(ValueError, match="scale does not apply to a pool of one task"):
        DaWinForCLIP(scale=0.5, heads=heads_config(["task_0"])).run(config_pool(1))


ODD_MODELS = {
    "extra layer": (dict(num_hidden_layers=3), "extra parameter 'encoder.layers.2."),
    "missing layer": (dict(num_hidden_layers=1), "has no 'encoder.layers.1."),
    "hidden size": (dict(hidden_size=48), r"'embeddings.class_embedding' of shape \[48\], "
                                          r"expected \[32\]"),
}


def _half(seed):
    return tiny_clip_vision_model(seed).half()


@pytest.mark.parametrize("method", list(METHODS))
def test_a_pool_in_two_dtypes_is_refused_naming_the_parameter(method):
    models = {"_pretrained_": tiny_clip_vision_model(0), "task_0": _half(1),
              "task_1": tiny_clip_vision_model(2)}
    with pytest.raises(ValueError, match=f"{method}: model 'task_0' .*'embeddings"
                                         f".class_embedding' in float16, expected float32"):
        METHODS[method](["task_0", "task_1"]).run(CLIPVisionModelPool(models))


def test_clip_dawin_heads_of_the_wrong_width_are_refused_naming_the_task():
    heads = OmegaConf.create({"_target_": HEADS, "tasks": ["task_0", "task_1"], "width": 48})
    with pytest.raises(ValueError, match=r"head of task 'task_0' is \[5, 48\]; expected "
                                         r"\[C, 32\]"):
        DaWinForCLIP(heads=heads).run(config_pool(2))


@pytest.mark.parametrize("odd", list(ODD_MODELS))
@pytest.mark.parametrize("method", list(METHODS))
def test_pools_of_other_architectures_are_refused_naming_model_and_parameter(method, odd):
    kwargs, message = ODD_MODELS[odd]
    models = {"_pretrained_": tiny_clip_vision_model(0), "task_0": tiny_clip_vision_model(1),
              "task_1": tiny_clip_vision_model(2, **kwargs)}
    with pytest.raises(ValueError, match=f"{method}: model 'task_1' .*{message}"):
        METHODS[method](["task_0", "task_1"]).run(CLIPVisionModelPool(models))


@pytest.mark.parametrize("method", list(METHODS))
def test_running_twice_on_one_in_memory_pool_gives_the_same_model(method):
    """FusionBench's WEMoE turns the expert modules into task vectors in place: the pool's
    own modules must not be touched."""
    models = {"_pretrained_": tiny_clip_vision_model(0), "task_0": tiny_clip_vision_model(1),
              "task_1": tiny_clip_vision_model(2)}
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in models.items()}
    pool = CLIPVisionModelPool(models)
    x = images(4)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)  # the gates' random initialisation
        with torch.no_grad():
            outs.append(METHODS[method](["task_0", "task_1"]).run(pool)(x).pooler_output)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for name, model in models.items():
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[name][key]), (name, key)


def test_clip_dawin_without_heads_or_text_model_says_how_to_give_them():
    with pytest.raises(ValueError, match=r"clip_dawin: .*no processor.*\+method\.heads"):
        DaWinForCLIP().run(config_pool(2))


def test_clip_dawin_with_a_processor_but_no_clip_checkpoint_says_so():
    pool = config_pool(2, processor=OmegaConf.create({"_target_": "builtins.dict"}))
    with pytest.raises(ValueError, match=r"could not be loaded as a CLIP model.*method\.heads"):
        DaWinForCLIP().run(pool)


@pytest.mark.parametrize("cls", [FusedCLIPWeightEnsemblingMoE,
                                 FusedCLIPDataAdaptiveWeightEnsembling])
def test_adaptation_without_text_model_says_how_to_skip_it(cls):
    with pytest.raises(ValueError, match=r"max_steps > 0.*no processor.*method\.max_steps=0"):
        cls(max_steps=1).run(config_pool(2))
