"""Checkpoints as other code bases save them, for loaders that must read them without
that code: wise-ft's ``ImageClassifier`` (``torch.save(model)``), model-soups' state
dicts, the task-vectors code's pickled ``ImageEncoder`` and ``ClassificationHead``.

The classes are written to a throwaway package, pickled, then made unimportable (removed
from ``sys.modules`` and ``sys.path``), as they are on a user's machine."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import torch

MODELING = textwrap.dedent('''
    import torch


    class ImageEncoder(torch.nn.Module):
        def __init__(self, model, keep_lang=False):
            super().__init__()
            self.model = model
            self.train_preprocess = None
            self.val_preprocess = None
            self.cache_dir = "/nonexistent/cache"
            if not keep_lang and hasattr(self.model, "transformer"):
                delattr(self.model, "transformer")

        def forward(self, images):
            return self.model.encode_image(images)


    class ClassificationHead(torch.nn.Linear):
        def __init__(self, normalize, weights, biases=None):
            output_size, input_size = weights.shape
            super().__init__(input_size, output_size)
            self.normalize = normalize
            self.weight = torch.nn.Parameter(weights.clone())
            self.bias = torch.nn.Parameter(
                biases.clone() if biases is not None else torch.zeros(output_size))


    class ImageClassifier(torch.nn.Module):
        def __init__(self, image_encoder, classification_head, process_images=True):
            super().__init__()
            self.image_encoder = image_encoder
            self.classification_head = classification_head
            self.process_images = process_images
''')


def foreign_module(root: Path, package: str):
    """``<package>.modeling`` with the classes above, importable until ``forget``."""
    folder = root / package
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("")
    (folder / "modeling.py").write_text(MODELING)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    return importlib.import_module(f"{package}.modeling")


def forget(root: Path, package: str) -> None:
    """Make ``package`` unimportable again, as on a machine without that code."""
    sys.path.remove(str(root))
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
    import shutil

    shutil.rmtree(root / package)


def save_pickled(root: Path, package: str, build, path: Path) -> None:
    """``torch.save(build(modeling))`` with the foreign classes, then forget them."""
    modeling = foreign_module(root, package)
    try:
        torch.save(build(modeling), path)
    finally:
        forget(root, package)
