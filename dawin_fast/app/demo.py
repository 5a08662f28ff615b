"""The demo: DaWin on two small ViTs trained on real data shipped with scikit-learn.

Setup (all on the machine, in about a minute on two CPU cores):

* data: scikit-learn's handwritten digits (1 797 images, 8x8, 10 classes), split in half;
* model 0, "general": an open_clip ``VisionTransformer`` + linear head trained with heavy
  augmentation (rotations, contrast inversion, noise): robust, less accurate on clean digits;
* model 1, "fine-tuned": model 0 fine-tuned on clean digits only, long enough to forget the
  augmentations: better in distribution, worse under shift;
* test sets: the held-out clean digits (in distribution) and the same digits shifted
  (rotated, inverted, noisy).

Then every method runs on both test sets through ``dawin_fast``: each model alone, WiSE-FT
(λ = 0.5), the dynamic output ensemble, DaWin per-sample and DaWin with a 3-component Beta
mixture. The numbers printed are whatever the run measured.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..nn.classifier import DaWinClassifier
from ..nn.vit import DaWinViT
from .evaluate import EvalConfig, evaluate, format_table

IMAGE = 8
PATCH = 2
DIGITS = 1797  # images in scikit-learn's digits
TEST_IMAGES = DIGITS - DIGITS // 2  # the held-out half each test set holds
EPOCHS = (40, 25)  # general, fine-tuned
LOGIT_SCALE = 10.0  # like CLIP's logit scale: folded into the head handed to DaWin


@dataclass
class DemoData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    shifted_x: torch.Tensor


def load_digits_data(seed: int = 0) -> DemoData:
    """Digits as [N, 3, 8, 8] in [-1, 1]; a stratified-enough random half for testing."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - the CLI checks it first
        raise ImportError("the demo needs scikit-learn: pip install 'dawin_fast[demo]'") from err
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0  # 0..16 -> -1..1
    x = x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = perm[: len(y) // 2], perm[len(y) // 2 :]
    shifted = shift(x[test], torch.Generator().manual_seed(seed + 1), strength=1.0)
    return DemoData(x[train], y[train], x[test], y[test], shifted)


def shift(x: torch.Tensor, gen: torch.Generator, strength: float) -> torch.Tensor:
    """Rotate (up to ±35° x strength), invert contrast (half the images), add noise."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(35) * strength
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1),
                         torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1
    invert = torch.rand(n, generator=gen) < 0.5 * strength
    out = torch.where(invert[:, None, None, None], -out, out)
    return out + torch.randn(out.shape, generator=gen) * 0.3 * strength


class TinyCLIPClassifier(nn.Module):
    """An open_clip VisionTransformer, L2-normalised features, a scaled linear head."""

    def __init__(self, width: int = 48, layers: int = 3, embed_dim: int = 32) -> None:
        super().__init__()
        from open_clip.transformer import VisionTransformer

        self.visual = VisionTransformer(image_size=IMAGE, patch_size=PATCH, width=width,
                                        layers=layers, heads=4, mlp_ratio=2.0,
                                        output_dim=embed_dim)
        self.head = nn.Linear(embed_dim, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(self.visual(x), dim=-1)) * LOGIT_SCALE

    def head_weight(self) -> torch.Tensor:
        """The head with the logit scale folded in, [10, embed_dim]."""
        return self.head.weight.detach() * LOGIT_SCALE


def train(model: TinyCLIPClassifier, data: DemoData, epochs: int, augment: float,
          seed: int, lr: float = 3e-3, progress: str | None = None,
          lines: bool = False) -> TinyCLIPClassifier:
    """AdamW with cosine decay; ``augment`` = strength of the random shift per batch.

    ``progress``: a bar of that name over the epochs, on stderr (the table goes to stdout);
    with ``lines``, plain lines instead (``progress_line``), for a log.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(data.train_y) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    began = time.perf_counter()
    for epoch in tqdm(range(epochs), desc=progress, unit="epoch", leave=False,
                      file=sys.stderr, disable=progress is None or lines):
        if progress is not None and lines:
            progress_line(progress, epoch, epochs, time.perf_counter() - began)
        perm = torch.randperm(len(data.train_y), generator=gen)
        for start in range(0, len(perm), 64):
            idx = perm[start : start + 64]
            x = data.train_x[idx]
            if augment > 0:
                x = shift(x, gen, augment * float(torch.rand(1, generator=gen)))
            loss = F.cross_entropy(model(x), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def progress_line(name: str, epoch: int, epochs: int, elapsed_s: float) -> None:
    """At the start of the first epoch and of every fifth of them, one plain line on
    stderr (a log has no bar to redraw)."""
    step = max(1, math.ceil(epochs / 5))
    if epoch % step == 0:
        print(f"{name}: epoch {epoch + 1}/{epochs}, {elapsed_s:.0f} s", file=sys.stderr,
              flush=True)


def build_models(data: DemoData, seed: int = 0, epochs: tuple[int, int] = EPOCHS,
                 progress: bool = False, lines: bool = False):
    """(general, fine-tuned) TinyCLIPClassifiers (``progress``: bars on stderr, or plain
    lines with ``lines``).

    Trained on one CPU thread: a float sum split over another number of threads rounds
    differently, and over hundreds of steps that changes the accuracies a seed gives, so
    the same seed gives the same models on any core count (the models are tiny: more
    threads barely speed them up)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        general = train(TinyCLIPClassifier(), data, epochs[0], augment=1.0, seed=seed,
                        progress="training the general model" if progress else None,
                        lines=lines)
        fine_tuned = TinyCLIPClassifier()
        fine_tuned.load_state_dict(general.state_dict())
        fine_tuned = train(fine_tuned, data, epochs[1], augment=0.0, seed=seed + 1, lr=2e-3,
                           progress="fine-tuning it on clean digits" if progress else None,
                           lines=lines)
    finally:
        torch.set_num_threads(threads)
    return general, fine_tuned


def run_demo(temperatures=(1.0, 1.0), offset_adjustment: bool = False, n_clusters: int = 3,
             device: str | None = None, seed: int = 0, plot: str | None = None,
             epochs: tuple[int, int] = EPOCHS, progress: bool = False,
             progress_lines: bool = False) -> dict:
    """Train, evaluate and print the demo table; returns the report.

    ``plot``: also save the figure there (written atomically). ``progress``: bars over the
    training epochs and the evaluation passes, on stderr; ``progress_lines``: instead, a
    plain line on stderr now and then during training (for a log, not a terminal).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    data = load_digits_data(seed)
    general, fine_tuned = build_models(data, seed, epochs, progress or progress_lines,
                                       lines=progress_lines and not progress)
    trained_s = time.perf_counter() - start
    print(f"trained two ViTs on {len(data.train_y)} digits in {trained_s:.1f} s "
          f"(general: augmented; fine-tuned: clean only)")
    classifier = DaWinClassifier(
        DaWinViT.from_open_clip([general.visual, fine_tuned.visual]),
        [general.head_weight(), fine_tuned.head_weight()],
    ).to(device)
    config = EvalConfig(temperatures=tuple(temperatures), offset_adjustment=offset_adjustment,
                        n_clusters=n_clusters, seed=seed, batch_size=256)
    report = {"config": {"temperatures": list(temperatures), "offset_adjustment":
                         offset_adjustment, "n_clusters": n_clusters, "device": device,
                         "seed": seed, "epochs": list(epochs)}, "sets": {}}
    for name, x in (("in-distribution", data.test_x), ("shifted", data.shifted_x)):
        report["sets"][name] = evaluate(classifier, _batches(x, data.test_y, 256, device),
                                        config, progress=progress)
    print(format_table(report["sets"], model_names=("general", "fine-tuned")))
    if plot:
        from .plots import save_plot

        save_plot(report["sets"], plot)
        print(f"saved {plot}")
    return report


def _batches(x, y, batch_size, device):
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
