"""End-to-end DaWin benchmark (targets P5/P6, docs/design.md): a whole open_clip ViT, M = 2.

Methods, all on the same images and models:
    plain_forward        one ordinary open_clip forward of model 0 + its head (the unit)
    wise_ft              dawin_fast, one static coefficient row (one fused pass)
    dawin_mixture        dawin_fast DaWin: expert passes + Beta mixture (K=3) + merged pass
    dawin_per_sample     dawin_fast DaWin with exact per-sample coefficients
    merged_forward_k3    one DaWin ViT forward (with head) under 3 given cluster rows: the
                         merged pass alone, coefficients known (P6's "DaWin ViT forward")
    merged_forward_per_sample  the same with a given coefficient row per image
    rebuild_per_cluster  the authors' style: plain expert passes, mixture, then per cluster
                         a rebuilt state dict loaded into a model and a forward
    rebuild_per_sample   the same with one rebuilt model per sample (exact DaWin, slow)

On a GPU: ViT-B/32, bf16, 1024 images at 224 px (the P5 setup); the rebuild loops may run
on a prefix of the batch (``rebuild_images``) and are reported per image. On a CPU: a toy
ViT so the harness runs anywhere; its times mean nothing. With CUDA, each record also
holds the peak extra GPU memory of the call (P6) and every record the bytes of the
largest layer's merged weight (P6's bound).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..algorithm.coefficients import coefficients_two
from ..algorithm.mixture import BetaMixture
from ..nn.classifier import DaWinClassifier
from ..nn.vit import DaWinViT
from ..ops import use_backend
from ..pipeline import DaWin
from . import paired

METHODS = ("plain_forward", "wise_ft", "dawin_mixture", "dawin_per_sample",
           "merged_forward_k3", "merged_forward_per_sample", "rebuild_per_cluster",
           "rebuild_per_sample")


@dataclasses.dataclass(frozen=True)
class E2ECase:
    name: str
    vit: dict  # open_clip VisionTransformer arguments
    images: int
    classes: int
    dtype: torch.dtype
    device: str
    rebuild_images: int  # images the per-sample rebuild loop runs on

    @property
    def id(self) -> str:
        return f"e2e-{self.name}-{self.images}img"


def default_case() -> E2ECase:
    if torch.cuda.is_available():
        return E2ECase("ViT-B-32", dict(image_size=224, patch_size=32, width=768, layers=12,
                                        heads=12, mlp_ratio=4.0, output_dim=512),
                       images=1024, classes=1000, dtype=torch.bfloat16, device="cuda",
                       rebuild_images=128)
    return E2ECase("toy", dict(image_size=32, patch_size=8, width=64, layers=2, heads=4,
                               mlp_ratio=2.0, output_dim=32),
                   images=16, classes=10, dtype=torch.float32, device="cpu",
                   rebuild_images=4)


class _Plain(nn.Module):
    """An ordinary classifier: open_clip visual, normalised features, linear head."""

    def __init__(self, visual: nn.Module, head: torch.Tensor) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Parameter(head, requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1) @ self.head.t()


@dataclasses.dataclass
class E2ESetup:
    case: E2ECase
    plains: list[_Plain]
    classifier: DaWinClassifier
    images: torch.Tensor


def make_setup(case: E2ECase, seed: int = 0) -> E2ESetup:
    from open_clip.transformer import VisionTransformer

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = VisionTransformer(**case.vit)
    plains = []
    for i in range(2):
        visual = copy.deepcopy(base)
        with torch.no_grad():  # a "fine-tuned" copy: the same weights, moved a little
            for p in visual.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02 * i)
        head = torch.randn(case.classes, case.vit["output_dim"], generator=gen) * 20
        plains.append(_Plain(visual, head).to(case.device, case.dtype).eval())
    classifier = DaWinClassifier(DaWinViT.from_open_clip([p.visual for p in plains]),
                                 [p.head for p in plains])
    image_size = case.vit["image_size"]
    images = torch.randn(case.images, 3, image_size, image_size, generator=gen)
    return E2ESetup(case, plains, classifier, images.to(case.device, case.dtype))


def _rebuilt(plains: list[_Plain], row: torch.Tensor, into: _Plain) -> _Plain:
    """The authors' approach: a full state dict sum_i row[i] * theta_i, loaded."""
    states = [p.state_dict() for p in plains]
    merged = {k: sum(float(c) * s[k] for c, s in zip(row, states, strict=True))
              if v.is_floating_point() else v for k, v in states[0].items()}
    into.load_state_dict(merged)
    return into


def _experts_and_lambda(plains, images, temperatures=(1.0, 1.0)):
    z0, z1 = plains[0](images), plains[1](images)
    return coefficients_two(z0.float(), z1.float(), temperatures)


def build(method: str, setup: E2ESetup) -> tuple[Callable[[], torch.Tensor], int]:
    """(callable, number of images it processes). On a CPU the fused methods run the
    PyTorch path, never the Triton interpreter."""
    fn, count = _build(method, setup)
    backend = "auto" if setup.case.device == "cuda" else "torch"

    def run() -> torch.Tensor:
        with use_backend(backend), torch.no_grad():
            return fn()

    return run, count


def _build(method: str, setup: E2ESetup) -> tuple[Callable[[], torch.Tensor], int]:
    plains, classifier, images, case = setup.plains, setup.classifier, setup.images, setup.case
    if method == "plain_forward":
        return (lambda: plains[0](images)), case.images
    if method == "wise_ft":
        row = torch.tensor([0.5, 0.5], device=case.device)
        return (lambda: classifier(images, row)), case.images
    if method == "dawin_mixture":
        dawin = DaWin(classifier, mode="mixture", n_clusters=3)
        return (lambda: dawin.predict(images)), case.images
    if method == "dawin_per_sample":
        dawin = DaWin(classifier, mode="per_sample")
        return (lambda: dawin.predict(images)), case.images
    gen = torch.Generator().manual_seed(1)
    if method == "merged_forward_k3":
        lam = torch.tensor([0.2, 0.5, 0.8])
        table = torch.stack([1 - lam, lam], dim=1).to(case.device)
        labels = torch.randint(0, 3, (case.images,), generator=gen).to(case.device)
        return (lambda: classifier(images, table, labels=labels)), case.images
    if method == "merged_forward_per_sample":
        lam = torch.rand(case.images, generator=gen)
        rows = torch.stack([1 - lam, lam], dim=1).to(case.device)
        return (lambda: classifier(images, rows)), case.images
    scratch = copy.deepcopy(plains[0])
    if method == "rebuild_per_cluster":
        def per_cluster():
            lam = _experts_and_lambda(plains, images)
            mixture = BetaMixture(n_components=3).fit(lam)
            labels = torch.as_tensor(mixture.predict(lam), device=images.device)
            out = torch.empty(images.shape[0], case.classes, device=case.device,
                              dtype=case.dtype)
            for k, mean in enumerate(mixture.means_):
                members = (labels == k).nonzero().squeeze(1)
                if members.numel():
                    row = torch.tensor([1 - mean, mean])
                    out[members] = _rebuilt(plains, row, scratch)(images[members])
            return out
        return per_cluster, case.images
    if method == "rebuild_per_sample":
        subset = images[: case.rebuild_images]

        def per_sample():
            lam = _experts_and_lambda(plains, subset)
            return torch.cat([_rebuilt(plains, torch.tensor([1 - float(v), float(v)]),
                                       scratch)(subset[b : b + 1])
                              for b, v in enumerate(lam)])
        return per_sample, case.rebuild_images
    raise ValueError(f"unknown method {method!r}")


@torch.no_grad()
def measure(fn: Callable[[], torch.Tensor], device: str, repeats: int = 3) -> dict:
    """Median wall milliseconds over ``repeats`` synchronised calls (after one warm-up),
    and on CUDA the peak GPU memory the call allocated beyond what was live before it."""
    fn()
    times = []
    extra = None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
            extra = torch.cuda.max_memory_allocated() - before
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats,
            "peak_extra_bytes": extra}


def repeats_for(method: str, device: str) -> int:
    """Timed calls per method on a GPU: the per-sample rebuild loop once (seconds per
    call), the per-cluster one 3 times, everything else 10 times. On a CPU (toy sizes,
    the times mean nothing) once."""
    if method == "rebuild_per_sample" or device != "cuda":
        return 1
    if method == "rebuild_per_cluster":
        return 3
    return 10


def rounds_for(method: str, device: str) -> int:
    """Rounds of a method side by side with plain_forward: 3 for the rebuild loops on a GPU
    (seconds per call) and for the per-sample one anywhere, 9 for the rest (on a CPU
    shared with other processes, fewer rounds leave the median at the mercy of a few)."""
    if method == "rebuild_per_sample" or (method == "rebuild_per_cluster" and device == "cuda"):
        return 3
    return 9


def _warm_up(fn: Callable[[], torch.Tensor], device: str) -> int | None:
    """One call (compiles, caches); on CUDA the peak GPU memory it allocated beyond what
    was live before it (P6)."""
    if device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


@torch.no_grad()
def measure_side_by_side(setup: E2ESetup, method: str, rounds: int | None = None,
                         load: Callable[[], float | None] = paired.load_average) -> dict:
    """``method``'s record, timed in alternating rounds with one plain forward (for
    plain_forward itself: with a second, identical plain forward, the noise floor). On a
    CPU on one thread (``paired.one_cpu_thread``).

    ``vs_plain_forward`` is the spread over rounds of the per-image time ratio;
    ``noise`` the one-line note of ``paired.noise_note`` (None when quiet)."""
    case = setup.case
    watch = paired.LoadWatch(load)
    unit, _ = build("plain_forward", setup)
    fn, count = build(method, setup)
    sync = torch.cuda.synchronize if case.device == "cuda" else None
    with paired.one_cpu_thread(case.device):
        extra = _warm_up(fn, case.device)
        samples = paired.time_side_by_side({"unit": unit, "method": fn},
                                           rounds or rounds_for(method, case.device), sync=sync)
    per_image = {"unit": [t / case.images for t in samples["unit"]],
                 "method": [t / count for t in samples["method"]]}
    vs_unit = paired.ratio(per_image, "method", "unit")
    times = paired.spread(samples["method"])
    result = {"median_ms": times.median, "min_ms": times.low,
              "repeats": times.rounds, "peak_extra_bytes": extra}
    rec = record(setup, method, count, result)
    rec.update(vs_plain_forward=vs_unit.as_dict(), load_average=watch.check(),
               cores=paired.core_count())
    rec["noise"] = paired.noise_note([vs_unit], rec["load_average"], rec["cores"])
    return rec


def layer_weight_bytes(setup: E2ESetup) -> int:
    """Bytes of the largest single layer's merged weight (one model's share of a stacked
    [M, ...] tensor): P6's bound on the extra memory of a DaWin forward."""
    num_models = setup.classifier.num_models
    stacked = [t for t in (*setup.classifier.parameters(), *setup.classifier.buffers())
               if t.dim() >= 3 and t.shape[0] == num_models]
    return max(t[0].numel() * t.element_size() for t in stacked)


def record(setup: E2ESetup, method: str, count: int, result: dict) -> dict:
    """One method's record: the case, the time for the whole batch and per image, memory."""
    case = setup.case
    return dict(case=case.id, method=method, images=count, device=case.device,
                dtype=str(case.dtype).removeprefix("torch."), batch_images=case.images,
                ms_per_image=result["median_ms"] / count,
                layer_weight_bytes=layer_weight_bytes(setup), **result)


def run(methods: tuple[str, ...] = METHODS, case: E2ECase | None = None,
        rounds: int | None = None,
        load: Callable[[], float | None] = paired.load_average) -> list[dict]:
    """One record per method (``measure_side_by_side``): time for the whole batch and per
    image, its ratio to a plain forward timed beside it, memory."""
    setup = make_setup(case or default_case())
    return [measure_side_by_side(setup, method, rounds, load) for method in methods]


def render_markdown(records: list[dict], header: list[str]) -> str:
    """ms per image, × plain_forward (median over rounds, interquartile range), and peak
    extra memory, per method; below: methods without a time, with their reason, and the
    note of ``paired.noise_note`` when the numbers are noisy."""
    timed = [r for r in records if r.get("ms_per_image") is not None]
    unit = next((r["ms_per_image"] for r in timed if r["method"] == "plain_forward"), None)
    lines = list(header) + ["", "| method | images timed | ms / image | "
                            "× plain forward (median, IQR over rounds) | "
                            "peak extra GPU memory |", "|---|---|---|---|---|"]
    apart = []
    for r in timed:
        if r.get("vs_plain_forward"):
            ratio = paired.spread_from_dict(r["vs_plain_forward"]).format()
        elif unit:
            ratio = f"{r['ms_per_image'] / unit:.2f} (timed apart)"
            apart.append(r["method"])
        else:
            ratio = "–"
        memory = (f"{r['peak_extra_bytes'] / 2**20:.0f} MiB"
                  if r.get("peak_extra_bytes") is not None else "–")
        lines.append(f"| {r['method']} | {r['images']} | {r['ms_per_image']:.4f} | {ratio} | "
                     f"{memory} |")
    if any(r.get("vs_plain_forward") for r in timed):
        lines += ["", "Each ratio: the median over rounds that alternate the method and a plain "
                  "forward (plain_forward's own: against a second, identical plain forward, "
                  "the noise floor)."]
    if apart:
        lines += ["", f"Timed apart from plain_forward, so a change of load in between skews "
                  f"the ratio: {', '.join(apart)}."]
    missing = [f"{r['method']} ({r.get('error') or r.get('skipped') or 'no time'})"
               for r in records if r.get("ms_per_image") is None]
    if missing:
        lines += ["", f"Not timed: {'; '.join(missing)}."]
    note = paired.records_note(timed, ("vs_plain_forward",))
    if note:
        lines += ["", f"**{note}**"]
    return "\n".join(lines)
