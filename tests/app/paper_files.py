"""Synthetic stand-ins for the robust fine-tuning benchmark: a tiny CLIP (random weights,
a text tower open_clip's tokenizer can feed) saved as a full open_clip state dict (the
zero-shot model) and as a model-soups checkpoint (the fine-tuned one, head included), and
the six datasets laid out as their official downloads are, with random images, real
folder names and ObjectNet mapping files written in ObjectNet's schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dawin_fast.app.imagenet_wnids import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS
from tests.models import perturb

ARCH = "tiny-clip"
FEATURES = 12
CONFIG = {
    "embed_dim": FEATURES,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 4,
                   "head_width": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2,
                 "layers": 1},
}
CLASS_NAMES = [f"thing {i}" for i in range(1000)]
TEMPLATE = "a photo of a {}."

# ObjectNet: three classes mapped to ImageNet (one to two ImageNet classes), one not.
OBJECTNET_FOLDERS = {"air_freshener": "Air freshener", "alarm_clock": "Alarm clock",
                     "backpack": "Backpack", "unmapped_thing": "Unmapped thing"}
OBJECTNET_TO_IMAGENET = {"Air freshener": "imagenet class 5",
                         "Alarm clock": "imagenet class 9; imagenet class 400",
                         "Backpack": "imagenet class 77"}


def pytorch_index(imagenet_id: int) -> int:
    """ObjectNet's pytorch_to_imagenet_2012_id.json, inverted: a permutation here, so a
    wrong reading of the mapping shows."""
    return next(p for p in range(1000) if (p * 7 + 3) % 1000 == imagenet_id)


def save_image(path: Path, seed: int, size: int = 20) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


def _images(folder: Path, seed: int, count: int = 2) -> None:
    for i in range(count):
        save_image(folder / f"img_{i}.png", seed * 10 + i)


def make_models(root: Path) -> dict:
    """zs.pt (an open_clip CLIP state dict), ft_soup.pt (model-soups: 'model.*' without the
    text transformer, plus 'classification_head.*'), names.txt and templates.txt. The
    models are built with QuickGELU, as OpenAI's weights are."""
    import open_clip

    config = root / f"{ARCH}.json"
    config.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    zero_shot = open_clip.create_model(ARCH, pretrained=None, force_quick_gelu=True).eval()
    fine_tuned = open_clip.create_model(ARCH, pretrained=None, force_quick_gelu=True).eval()
    fine_tuned.load_state_dict(zero_shot.state_dict())
    perturb(fine_tuned.visual, seed=1)
    torch.save(zero_shot.state_dict(), root / "zs.pt")
    gen = torch.Generator().manual_seed(3)
    head = {"weight": torch.randn(1000, FEATURES, generator=gen) * 5,
            "bias": torch.randn(1000, generator=gen) * 0.1}
    soup = {f"model.{k}": v for k, v in fine_tuned.state_dict().items()
            if not k.startswith("transformer.")}
    soup.update({f"classification_head.{k}": v for k, v in head.items()})
    torch.save(soup, root / "ft_soup.pt")
    (root / "names.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    (root / "templates.txt").write_text(TEMPLATE + "\n")
    return {"zero_shot": zero_shot, "fine_tuned": fine_tuned, "ft_head": head}


def make_datasets(root: Path) -> dict[str, Path]:
    """The six datasets in their official layouts (a few classes, two images each)."""
    paths = {}
    imagenet = root / "imagenet"
    for c, wnid in enumerate((IMAGENET_WNIDS[0], IMAGENET_WNIDS[7], IMAGENET_WNIDS[999])):
        _images(imagenet / "val" / wnid, seed=100 + c)
    paths["imagenet"] = imagenet
    v2 = root / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for c, folder in enumerate(("0", "2", "10")):  # as strings, "10" sorts before "2"
        _images(v2 / folder, seed=200 + c)
    paths["imagenet-v2"] = v2.parent
    for name, subset, seed in (("imagenet-r", IMAGENET_R_WNIDS, 300),
                               ("imagenet-a", IMAGENET_A_WNIDS, 400)):
        for c, wnid in enumerate((subset[0], subset[5], subset[199])):
            _images(root / name / wnid, seed=seed + c)
        (root / name / "README.txt").write_text("a file beside the class folders\n")
        paths[name] = root / name
    for c, wnid in enumerate((IMAGENET_WNIDS[3], IMAGENET_WNIDS[500])):
        _images(root / "sketch" / wnid, seed=500 + c)
    paths["imagenet-sketch"] = root / "sketch"
    objectnet = root / "objectnet-1.0"
    mappings = objectnet / "mappings"
    mappings.mkdir(parents=True)
    (mappings / "folder_to_objectnet_label.json").write_text(json.dumps(OBJECTNET_FOLDERS))
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps(OBJECTNET_TO_IMAGENET))
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(
        json.dumps({str(p): (p * 7 + 3) % 1000 for p in range(1000)}))
    (mappings / "imagenet_to_label_2012_v2").write_text(
        "".join(f"imagenet class {i}\n" for i in range(1000)))
    for c, folder in enumerate(OBJECTNET_FOLDERS):
        _images(objectnet / "images" / folder, seed=600 + c)
    paths["objectnet"] = objectnet
    return paths


def paper_args(root: Path, paths: dict[str, Path], *extra: str) -> list[str]:
    """The documented command on the synthetic tree."""
    argv = ["eval", "--arch", ARCH, "--model-config", str(root / f"{ARCH}.json"),
            "--checkpoints", str(root / "zs.pt"), str(root / "ft_soup.pt"),
            "--class-names", str(root / "names.txt"), "--templates", str(root / "templates.txt"),
            "--workers", "0", "--batch-size", "4", "--clusters", "2",
            "--output", str(root / "out" / "report.json")]
    for name, path in paths.items():
        argv += ["--data", f"{name}={path}"]
    return argv + list(extra)
