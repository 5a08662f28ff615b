"""Tiny inputs for the dawin-fast command (checkpoints, heads, data), and how to check a
failed command: exit code 2, one line on stderr naming the culprit, no output file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from dawin_fast.app.cli import main
from tests.models import perturb

ARCH = "tiny-test-vit"
FEATURES = 12  # embed_dim: the size of the features the heads see
CONFIG = {
    "embed_dim": FEATURES,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 4,
                   "head_width": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def save_png(path: Path, seed: int = 0) -> None:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


def make_models(root: Path, gen: torch.Generator, arch: str = ARCH) -> None:
    """``<arch>.json`` (registered with open_clip), two checkpoints: zs.pt (full CLIP) and
    ft.safetensors (visual only, perturbed), and two 3-class heads: head_zs.pt (a tensor)
    and head_ft.pt (weight and bias), drawn from ``gen``."""
    import open_clip
    from safetensors.torch import save_file

    config = root / f"{arch}.json"
    config.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    zero_shot = open_clip.create_model(arch, pretrained=None)
    fine_tuned = open_clip.create_model(arch, pretrained=None)
    fine_tuned.load_state_dict(zero_shot.state_dict())
    perturb(fine_tuned.visual, seed=1)
    torch.save(zero_shot.state_dict(), root / "zs.pt")
    save_file({k: v.contiguous() for k, v in fine_tuned.visual.state_dict().items()},
              str(root / "ft.safetensors"))
    torch.save(torch.randn(3, FEATURES, generator=gen) * 5, root / "head_zs.pt")
    torch.save({"weight": torch.randn(3, FEATURES, generator=gen) * 5,
                "bias": torch.zeros(3)}, root / "head_ft.pt")


def make_files(root: Path) -> Path:
    """The models (``make_models``), a 3-class ImageFolder, a tensor dataset, an empty
    folder."""
    gen = torch.Generator().manual_seed(0)
    make_models(root, gen)
    for c, cls in enumerate(("cat", "dog", "eel")):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(3):
            save_png(root / "images" / cls / f"{i}.png", seed=3 * c + i)
    torch.save({"images": torch.randn(10, 3, 16, 16, generator=gen),
                "labels": torch.randint(0, 3, (10,), generator=gen)}, root / "data.pt")
    (root / "empty").mkdir()
    (root / "out").mkdir()
    return root


def eval_args(files: Path, **overrides) -> list[str]:
    """``eval`` arguments on the tiny files; ``None`` drops an option, ``True`` is a flag."""
    args = {
        "--arch": ARCH, "--model-config": str(files / f"{ARCH}.json"),
        "--checkpoints": [str(files / "zs.pt"), str(files / "ft.safetensors")],
        "--heads": [str(files / "head_zs.pt"), str(files / "head_ft.pt")],
        "--data": str(files / "images"), "--workers": "0", "--batch-size": "4",
        "--clusters": "2", "--output": str(files / "out" / "report.json"),
    }
    args.update(overrides)
    argv = ["eval"]
    for key, value in args.items():
        if value is None or value is False:
            continue
        argv.append(key)
        if value is not True:
            argv.extend(value if isinstance(value, list) else [value])
    return argv


def leftovers(directory: Path) -> list[str]:
    """Files in ``directory``, temporary ones included (names starting with a dot)."""
    return sorted(os.listdir(directory)) if directory.exists() else []


def run_error(argv: list[str], capsys, *fragments: str, no_files_in: Path | None = None,
              code: int = 2) -> str:
    """Run the command expecting a user error: exit ``code``, one line on stderr holding
    every fragment, and (``no_files_in``) nothing written in that directory."""
    before = leftovers(no_files_in) if no_files_in is not None else None
    assert main(argv) == code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "Traceback" not in captured.out
    for fragment in fragments:
        assert fragment in err, err
    if no_files_in is not None:
        assert leftovers(no_files_in) == before, "a failed command wrote files"
    return err
