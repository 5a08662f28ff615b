"""Checkpoints as users download them: wise-ft's pickled ``ImageClassifier``, model-soups
state dicts, the task-vectors code's pickled ``ImageEncoder`` and ``ClassificationHead``
(or their state dicts), read without that code installed; pickles only behind the trust
flag; the activation the weights were trained with (QuickGELU for OpenAI's)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from dawin_fast.app.checkpoints import (
    CheckpointError,
    inspect_arch,
    inspect_checkpoint,
    load_checkpoint,
    load_classification_head,
    load_image_encoder,
    resolve_activation,
)
from dawin_fast.app.cli import main
from tests.app.cli_files import run_error
from tests.app.foreign_code import save_pickled
from tests.app.paper_files import ARCH, CONFIG, make_datasets
from tests.models import perturb

pytestmark = pytest.mark.usefixtures("torch_backend")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A tiny open_clip CLIP (QuickGELU, as OpenAI's), a perturbed copy, their heads."""
    import open_clip

    root = tmp_path_factory.mktemp("formats")
    config = root / f"{ARCH}.json"
    config.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    base = open_clip.create_model(ARCH, pretrained=None, force_quick_gelu=True).eval()
    tuned = open_clip.create_model(ARCH, pretrained=None, force_quick_gelu=True).eval()
    tuned.load_state_dict(base.state_dict())
    perturb(tuned.visual, seed=2)
    gen = torch.Generator().manual_seed(1)
    heads = [(torch.randn(1000, 12, generator=gen), torch.randn(1000, generator=gen))
             for _ in range(2)]
    return root, base, tuned, heads


def _wise_ft(modeling, clip, head):
    # ImageEncoder drops the text tower of the model it is given: give it a copy.
    return modeling.ImageClassifier(modeling.ImageEncoder(copy.deepcopy(clip)),
                                    modeling.ClassificationHead(True, *head))


def _encoder(clip):
    """The task-vectors ``ImageEncoder`` builder for ``save_pickled``."""
    return lambda modeling: modeling.ImageEncoder(copy.deepcopy(clip))


def _same_visual(a, b):
    for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), key


def test_a_wise_ft_pickle_loads_only_when_trusted(clips, tmp_path):
    root, base, _, heads = clips
    path = tmp_path / "wiseft_zeroshot.pt"
    save_pickled(tmp_path, "wiseft_src", lambda m: _wise_ft(m, base, heads[0]), path)
    arch = inspect_arch(ARCH)
    with pytest.raises(CheckpointError, match="refusing to unpickle .* pass --trust-pickles"):
        inspect_checkpoint(str(path), arch)
    info = inspect_checkpoint(str(path), arch, trust_pickles=True)
    assert info.layout.name == "wise-ft" and info.head_shape == (1000, 12)
    quick, note = resolve_activation(ARCH, [info])
    assert quick is True and "trained with QuickGELU" in note
    loaded = load_checkpoint(str(path), inspect_arch(ARCH, quick), trust_pickles=True)
    _same_visual(loaded.visual, base.visual)
    assert torch.equal(loaded.head.weight, heads[0][0]) and torch.equal(loaded.head.bias,
                                                                       heads[0][1])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.visual(x), base.visual(x))  # QuickGELU, as trained


def test_the_cli_refusal_names_the_flag_and_the_flag_runs(clips, tmp_path, capsys):
    root, base, tuned, heads = clips
    zs, ft = tmp_path / "zs.pt", tmp_path / "ft.pt"
    save_pickled(tmp_path, "wiseft_src", lambda m: _wise_ft(m, base, heads[0]), zs)
    save_pickled(tmp_path, "wiseft_src", lambda m: _wise_ft(m, tuned, heads[1]), ft)
    paths = make_datasets(tmp_path / "data")
    argv = ["eval", "--arch", ARCH, "--model-config", str(root / f"{ARCH}.json"),
            "--checkpoints", str(zs), str(ft), "--data", f"imagenet={paths['imagenet']}",
            "--workers", "0", "--clusters", "2", "--no-cache",
            "--output", str(tmp_path / "out.json")]
    run_error(argv, capsys, f"checkpoint {zs}: refusing to unpickle", "--trust-pickles",
              no_files_in=tmp_path)
    assert main([*argv, "--trust-pickles"]) == 0
    out = capsys.readouterr().out
    assert "building tiny-clip with QuickGELU" in out
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["heads"] == [f"checkpoint: {zs}", f"checkpoint: {ft}"]


def test_checkpoints_trained_with_different_activations_are_refused(clips, tmp_path, capsys):
    root, base, _, heads = clips
    soup = {f"model.{k}": v for k, v in base.state_dict().items()}
    soup.update({"classification_head.weight": heads[0][0],
                 "classification_head.bias": heads[0][1]})
    torch.save(soup, tmp_path / "soup.pt")
    gelu = __import__("open_clip").create_model(ARCH, pretrained=None)
    gelu.load_state_dict(base.state_dict())
    save_pickled(tmp_path, "tv_src", _encoder(gelu), tmp_path / "enc.pt")
    arch = inspect_arch(ARCH)
    infos = [inspect_checkpoint(str(tmp_path / "soup.pt"), arch),
             inspect_checkpoint(str(tmp_path / "enc.pt"), arch, trust_pickles=True)]
    assert infos[0].layout.name == "model-soups" and infos[0].layout.quick_gelu is True
    assert infos[1].layout.name == "task-vectors" and infos[1].layout.quick_gelu is False
    with pytest.raises(CheckpointError, match="trained with GELU but checkpoint .*soup.pt "
                                              "with QuickGELU"):
        resolve_activation(ARCH, infos)


def test_task_vectors_checkpoints_load_into_task_vectors(clips, tmp_path):
    """Pickled ``ImageEncoder`` and ``ClassificationHead`` objects of the task-vectors code
    (and their state dicts) give the vision towers and heads ``task_vectors`` takes."""
    from dawin_fast import task_vectors

    root, base, tuned, heads = clips
    save_pickled(tmp_path, "tv_src", _encoder(base), tmp_path / "zs.pt")
    save_pickled(tmp_path, "tv_src", _encoder(tuned), tmp_path / "ft.pt")
    save_pickled(tmp_path, "tv_src", lambda m: m.ClassificationHead(True, *heads[1]),
                 tmp_path / "head.pt")
    with pytest.raises(CheckpointError, match="pass --trust-pickles \\(trust_pickles=True"):
        load_image_encoder(str(tmp_path / "zs.pt"), ARCH)
    with pytest.raises(CheckpointError, match="trust_pickles=True"):
        load_classification_head(str(tmp_path / "head.pt"))
    pre = load_image_encoder(str(tmp_path / "zs.pt"), ARCH, trust_pickles=True)
    fine = load_image_encoder(str(tmp_path / "ft.pt"), ARCH, trust_pickles=True)
    _same_visual(pre, base.visual)
    _same_visual(fine, tuned.visual)
    assert type(pre.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    head = load_classification_head(str(tmp_path / "head.pt"), trust_pickles=True)
    assert torch.equal(head.weight, heads[1][0]) and torch.equal(head.bias, heads[1][1])
    stack = task_vectors(pre, [fine])
    for (key, diff), (_, a), (_, b) in zip(stack[1].state_dict().items(),
                                           base.visual.state_dict().items(),
                                           tuned.visual.state_dict().items(), strict=True):
        assert torch.equal(diff, b - a), key
    # their state dicts ('model.*'; 'weight' and 'bias') need no trust
    torch.save({f"model.{k}": v for k, v in tuned.state_dict().items()
                if not k.startswith("transformer.")}, tmp_path / "ft_state.pt")
    torch.save({"weight": heads[1][0], "bias": heads[1][1]}, tmp_path / "head_state.pt")
    _same_visual(load_image_encoder(str(tmp_path / "ft_state.pt"), ARCH, quick_gelu=True),
                 tuned.visual)
    assert torch.equal(load_classification_head(str(tmp_path / "head_state.pt")).weight,
                       heads[1][0])


def test_an_openai_state_dict_is_quick_gelu(clips, tmp_path):
    root, base, _, _ = clips
    state = dict(base.state_dict())
    state.update(input_resolution=torch.tensor(16), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(49408))
    torch.save(state, tmp_path / "openai.pt")
    info = inspect_checkpoint(str(tmp_path / "openai.pt"), inspect_arch(ARCH))
    assert info.layout.name == "OpenAI CLIP" and info.layout.quick_gelu is True
    assert info.has_text


def test_an_unknown_name_lists_the_pretrained_names(tmp_path):
    with pytest.raises(CheckpointError, match="nor an open_clip pretrained name for "
                                              "ViT-B-32: openai"):
        inspect_checkpoint("opnai", inspect_arch("ViT-B-32"))
