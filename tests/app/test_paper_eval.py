"""The paper's robust fine-tuning table from one ``dawin-fast eval`` command, on synthetic
stand-ins laid out as the official downloads are (tests/app/paper_files.py).

Each dataset's numbers are checked against an independent computation of the protocol:
open_clip models run one by one, logits projected onto the dataset's classes (ImageNet-R
and -A: their 200 logits; ObjectNet: the largest logit of its mapped ImageNet classes, on
border-cropped images), entropies on the projected logits, and per-sample DaWin as the
plainly interpolated state dict run as an ordinary model."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dawin_fast.app.cli import main
from dawin_fast.app.imagenet_wnids import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS
from tests.app.cli_files import run_error
from tests.app.paper_files import (
    CLASS_NAMES,
    OBJECTNET_TO_IMAGENET,
    TEMPLATE,
    make_datasets,
    make_models,
    paper_args,
    pytorch_index,
)
from tests.models import interpolate_model

pytestmark = pytest.mark.usefixtures("torch_backend")

DATASETS = ("imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch",
            "objectnet")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    models = make_models(root)
    paths = make_datasets(root)
    (root / "out").mkdir()
    return root, paths, models


# ------------------------------------------------------------- the independent protocol


def _samples(name: str, path) -> tuple[list[tuple[str, int]], list[list[int]] | None, int]:
    """(image, label) pairs, the head classes pooled into each dataset class (None: all
    1000), and the border crop, read the way the robust fine-tuning code reads them."""
    def folder_images(root, folders_labels):
        out = []
        for folder, label in sorted(folders_labels.items()):
            directory = os.path.join(root, folder)
            if os.path.isdir(directory):
                out += [(os.path.join(directory, f), label) for f in sorted(os.listdir(directory))]
        return out

    if name in ("imagenet", "imagenet-sketch"):
        root = os.path.join(path, "val") if name == "imagenet" else path
        return folder_images(root, {w: i for i, w in enumerate(IMAGENET_WNIDS)}), None, 0
    if name == "imagenet-v2":
        root = os.path.join(path, "imagenetv2-matched-frequency-format-val")
        return folder_images(root, {str(i): i for i in range(1000)}), None, 0
    if name in ("imagenet-r", "imagenet-a"):
        subset = IMAGENET_R_WNIDS if name == "imagenet-r" else IMAGENET_A_WNIDS
        mask = [i for i, w in enumerate(IMAGENET_WNIDS) if w in set(subset)]
        return folder_images(path, {w: i for i, w in enumerate(subset)}), \
            [[i] for i in mask], 0
    # ObjectNet, as wise-ft's get_metadata reads its mapping files
    mappings = os.path.join(path, "mappings")
    with open(os.path.join(mappings, "folder_to_objectnet_label.json")) as f:
        folder_map = {v: k for k, v in json.load(f).items()}
    to_ids = {folder_map[label]: [pytorch_index(int(n.split()[-1])) for n in names.split("; ")]
              for label, names in OBJECTNET_TO_IMAGENET.items()}
    classes = sorted(to_ids)
    return folder_images(os.path.join(path, "images"), {c: i for i, c in enumerate(classes)}), \
        [to_ids[c] for c in classes], 2


class _Full(nn.Module):
    """An open_clip vision tower, L2-normalised features, then a linear head."""

    def __init__(self, visual, weight, bias):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x):
        return self.head(F.normalize(self.visual(x), dim=-1))


def _zero_shot_weight(model) -> torch.Tensor:
    import open_clip

    tokens = open_clip.get_tokenizer("tiny-clip")([TEMPLATE.format(c) for c in CLASS_NAMES])
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1)
    return model.logit_scale.exp() * text


def _project(logits, groups):
    if groups is None:
        return logits
    return torch.stack([logits[:, g].max(dim=1).values for g in groups], dim=1)


def _entropy(logits):
    p = torch.softmax(logits.double(), dim=-1)
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


@torch.no_grad()
def reference(name, path, models) -> dict[str, list[int]]:
    """Per method, the predictions of the independent computation."""
    from open_clip.transform import image_transform
    from PIL import Image

    samples, groups, border = _samples(name, path)
    transform = image_transform(16, is_train=False)
    full = [_Full(models["zero_shot"].visual, _zero_shot_weight(models["zero_shot"]),
                  torch.zeros(1000)),
            _Full(models["fine_tuned"].visual, models["ft_head"]["weight"],
                  models["ft_head"]["bias"])]
    for m in full:
        m.eval()
    images = []
    for file, _ in samples:
        image = Image.open(file).convert("RGB")
        if border:
            w, h = image.size
            image = image.crop((border, border, w - border, h - border))
        images.append(transform(image))
    x = torch.stack(images)
    logits = [_project(m(x), groups) for m in full]
    lam = torch.softmax(-torch.stack([_entropy(z) for z in logits]), dim=0)[1]
    per_sample = [_project(interpolate_model(full, [1 - float(lam[b]), float(lam[b])])(
        x[b:b + 1]), groups).argmax(-1).item() for b in range(len(samples))]
    wise = _project(interpolate_model(full, [0.5, 0.5])(x), groups).argmax(-1)
    return {"labels": [y for _, y in samples], "model 0": logits[0].argmax(-1).tolist(),
            "model 1": logits[1].argmax(-1).tolist(), "WiSE-FT (λ=0.5)": wise.tolist(),
            "DaWin per-sample": per_sample, "lambda": lam.tolist()}


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def first_run(tree):
    import contextlib
    import io

    from dawin_fast import use_backend

    root, paths, _ = tree
    stdout = io.StringIO()
    with use_backend("torch"), contextlib.redirect_stdout(stdout):  # as torch_backend
        assert main(paper_args(root, paths, "--cache-dir", str(root / "cache"))) == 0
    return json.loads((root / "out" / "report.json").read_text()), stdout.getvalue()


def test_six_datasets_match_the_independent_protocol(tree, first_run):
    root, paths, models = tree
    report, stdout = first_run
    assert list(report["datasets"]) == list(DATASETS)
    assert report["activation"] == "QuickGELU"
    for name in DATASETS:
        detail = report["results"][name]
        expected = reference(name, str(paths[name]), models)
        per_sample = detail["per_sample"]
        assert per_sample["labels"] == expected["labels"], name
        for method in ("model 0", "model 1", "WiSE-FT (λ=0.5)", "DaWin per-sample"):
            assert per_sample["predictions"][method] == expected[method], (name, method)
        # λ from the entropies of the projected logits
        lam = [row[1] for row in per_sample["coefficients"]]
        assert lam == pytest.approx(expected["lambda"], abs=1e-5), name
        n = len(expected["labels"])
        correct = sum(p == y for p, y in zip(expected["DaWin per-sample"], expected["labels"],
                                             strict=True))
        assert report["datasets"][name]["DaWin (no mixture)"] == pytest.approx(correct / n)
    assert report["results"]["imagenet-r"]["classes"] == 200
    assert report["results"]["objectnet"]["classes"] == 3
    assert report["results"]["objectnet"]["n"] == 6  # the unmapped class's images left out
    ood = [report["datasets"][n]["DaWin"] for n in DATASETS[1:]]
    assert report["ood_average"]["DaWin"] == pytest.approx(sum(ood) / 5)
    # the paper's table: its six methods, a column per dataset and the OOD average
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert header.split()[1:] == [*DATASETS, "OOD", "avg"]
    rows = [line.split("  ")[0] for line in lines[lines.index(header) + 2:][:6]]
    assert rows == ["zero-shot", "fine-tuned", "WiSE-FT (λ=0.5)", "output ensemble",
                    "DaWin (no mixture)", "DaWin"]
    assert "building tiny-clip with QuickGELU" in stdout  # the model-soups weights say so


def test_a_cached_rerun_runs_no_expert_pass(tree, first_run, monkeypatch):
    root, paths, _ = tree
    report, _ = first_run

    def forbidden(*args, **kwargs):
        raise AssertionError("the expert pass ran again")

    monkeypatch.setattr("dawin_fast.pipeline.DaWin.expert_logits", forbidden)
    argv = paper_args(root, paths, "--cache-dir", str(root / "cache"))
    argv[argv.index("--output") + 1] = str(root / "out" / "again.json")
    assert main(argv) == 0
    again = json.loads((root / "out" / "again.json").read_text())
    assert again["datasets"] == report["datasets"]
    for name in DATASETS:
        assert again["results"][name]["expert_pass_cached"] is True
        assert again["results"][name]["per_sample"] == report["results"][name]["per_sample"]


def test_the_cache_follows_file_contents(tree, first_run, tmp_path):
    """A changed image is a new dataset: its expert pass runs again (never a stale cache)."""
    import shutil

    root, paths, _ = tree
    copy = tmp_path / "v2"
    shutil.copytree(paths["imagenet-v2"], copy)
    argv = paper_args(root, {"imagenet-v2": copy}, "--cache-dir", str(root / "cache"))
    argv[argv.index("--output") + 1] = str(tmp_path / "a.json")
    assert main(argv) == 0  # same contents elsewhere: served from the cache
    assert json.loads((tmp_path / "a.json").read_text())["results"]["imagenet-v2"][
        "expert_pass_cached"] is True
    from tests.app.paper_files import save_image

    save_image(copy / "imagenetv2-matched-frequency-format-val" / "2" / "img_0.png", seed=999)
    assert main(argv) == 0
    assert json.loads((tmp_path / "a.json").read_text())["results"]["imagenet-v2"][
        "expert_pass_cached"] is False


def test_seed_reaches_the_mixture(tree, tmp_path):
    root, paths, _ = tree
    argv = paper_args(root, {"imagenet": paths["imagenet"]}, "--seed", "7", "--no-cache")
    argv[argv.index("--output") + 1] = str(tmp_path / "s.json")
    assert main(argv) == 0
    assert json.loads((tmp_path / "s.json").read_text())["config"]["seed"] == 7


# ------------------------------------------------------------ refused layouts, one line


def _refused(tree, tmp_path, capsys, data: dict, *fragments, extra=()):
    root, _, _ = tree
    argv = paper_args(root, data, "--no-cache", *extra)
    argv[argv.index("--output") + 1] = str(tmp_path / "r.json")
    run_error(argv, capsys, *fragments, no_files_in=tmp_path)


@pytest.mark.usefixtures("no_work")
def test_wrong_layouts_are_refused_before_work(tree, tmp_path, capsys):
    import shutil

    root, paths, _ = tree
    bad_v2 = tmp_path / "v2"
    (bad_v2 / "n01440764").mkdir(parents=True)
    _refused(tree, tmp_path, capsys, {"imagenet-v2": bad_v2}, "folder 'n01440764'",
             "folders 0 ... 999")
    not_r = next(w for w in IMAGENET_WNIDS if w not in set(IMAGENET_R_WNIDS))
    shutil.copytree(paths["imagenet-r"], tmp_path / "r")
    (tmp_path / "r" / not_r).mkdir()
    _refused(tree, tmp_path, capsys, {"imagenet-r": tmp_path / "r"}, f"folder '{not_r}'",
             "200 imagenet-r classes")
    shutil.copytree(paths["objectnet"], tmp_path / "objectnet-1.0")
    os.remove(tmp_path / "objectnet-1.0" / "mappings" / "objectnet_to_imagenet_1k.json")
    _refused(tree, tmp_path, capsys, {"objectnet": tmp_path / "objectnet-1.0"},
             "mappings/objectnet_to_imagenet_1k.json is missing")
    flat = tmp_path / "flat"
    flat.mkdir()
    from tests.app.paper_files import save_image

    save_image(flat / "ILSVRC2012_val_00000001.png", seed=1)
    _refused(tree, tmp_path, capsys, {"imagenet": flat}, "no class folders",
             "valprep.sh")
    _refused(tree, tmp_path, capsys, {"imagenet": paths["imagenet"], "objectnet": flat},
             "no images/ folder")


@pytest.mark.usefixtures("no_work")
def test_a_head_of_other_classes_is_refused_for_imagenet_layouts(tree, tmp_path, capsys):
    root, paths, _ = tree
    heads = tmp_path / "heads"
    heads.mkdir()
    for name in ("a.pt", "b.pt"):
        torch.save(torch.randn(2, 12), heads / name)
    _refused(tree, tmp_path, capsys, {"imagenet-a": paths["imagenet-a"]},
             "imagenet-a is scored with ImageNet's 1000 classes", "heads score 2",
             extra=("--heads", str(heads / "a.pt"), str(heads / "b.pt")))
