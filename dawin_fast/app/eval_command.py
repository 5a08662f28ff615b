"""``dawin-fast eval``: validate everything first (``prepare_eval``), then run (``run_eval``).

``prepare_eval`` does only cheap work: argument consistency, output paths, the
architecture built on the meta device, checkpoint headers (keys and shapes), heads against
the model's feature size, the data's shape and class count against the heads, and every
image opened with PIL's ``verify()``. Any mistake is a one-line ``UserError`` before a
model loads. ``run_eval`` then loads, evaluates and returns the report; ``write_outputs``
writes it (atomically). Under torchrun every rank calls ``prepare_eval``, ``run_eval`` on
its shard of whole batches (``dawin_fast.distributed.shard``; the report comes back
gathered in dataset order on every rank), and rank 0 alone ``write_outputs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable

import torch

from .checkpoints import (
    ArchInfo,
    check_checkpoint,
    check_heads,
    inspect_arch,
    inspect_head,
    load_head,
    load_visuals,
    register_model_config,
)
from .datasets import DataInfo, checked_batches, collate, inspect_dataset, load_dataset
from .errors import UserError
from .evaluate import EvalConfig, evaluate, format_table
from .options import DTYPES, default_device
from .outputs import check_distinct, check_writable, write_text
from .parallel import Session


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """Everything ``run_eval`` needs, checked."""

    arch: ArchInfo
    model_config: str | None
    checkpoints: tuple[str, ...]
    heads: tuple[str, ...]
    num_classes: int
    data: DataInfo
    config: EvalConfig
    device: str
    dtype: str
    normalize: bool
    workers: int
    output: str
    plot: str | None


def check_clusters(clusters: int, n: int, batch_size: int, per_batch: bool,
                   offset_adjustment: bool) -> None:
    """The mixture needs more images than clusters wherever it is fitted (the whole set,
    or each batch with ``--per-batch``); the offset statistics need 2 images."""
    if per_batch:
        per_fit = min(batch_size, n)
        if clusters >= per_fit:
            fix = f"use --clusters < {per_fit}, " if per_fit > 1 else ""
            raise UserError(
                f"--clusters {clusters}: with --per-batch the mixture is fitted on each batch "
                f"of {per_fit} images and needs more images than clusters; {fix}use a larger "
                f"--batch-size, or drop --per-batch")
        if offset_adjustment and (per_fit < 2 or n % batch_size == 1):
            raise UserError(
                f"--offset-adjustment with --per-batch: a batch would hold 1 image and the "
                f"offset statistics need 2; choose another --batch-size than {batch_size}")
    else:
        if clusters >= n:
            raise UserError(f"--clusters {clusters}: the mixture is fitted on the {n} images "
                            f"and needs more images than clusters; use --clusters < {n}")
        if offset_adjustment and n < 2:
            raise UserError("--offset-adjustment: the offset statistics need at least 2 images")


def prepare_eval(args: argparse.Namespace,
                 progress: Callable[[Iterable], Iterable] = iter) -> EvalPlan:
    """Validate the arguments and inspect the files; a ``UserError`` on the first mistake."""
    m = len(args.checkpoints)
    if m < 2:
        raise UserError(f"--checkpoints: eval needs at least two checkpoints, got {m}")
    if len(args.heads) != m:
        raise UserError(f"--heads: {m} checkpoints but {len(args.heads)} heads; expected one "
                        f"head per checkpoint")
    if args.offset_adjustment and m != 2:
        raise UserError(f"--offset-adjustment: defined for two models, got {m} checkpoints")
    if args.temperatures is not None and len(args.temperatures) != m:
        raise UserError(f"--temperatures: {len(args.temperatures)} values for {m} models; "
                        f"expected {m}")
    check_writable(args.output, "--output")
    if args.plot:
        from .plots import check_plot_path

        check_plot_path(args.plot)
    inputs = {"--checkpoints": list(args.checkpoints), "--heads": list(args.heads),
              "--data": [args.data], "--model-config": [args.model_config]}
    check_distinct({"--output": args.output, "--plot": args.plot}, inputs)

    if args.model_config is not None:
        register_model_config(args.model_config)
    arch = inspect_arch(args.arch)
    for path in args.checkpoints:
        check_checkpoint(path, arch)
    num_classes = check_heads([inspect_head(path) for path in args.heads], arch)
    data = inspect_dataset(args.data, arch, num_classes, progress)
    check_clusters(args.clusters, data.size, args.batch_size, args.per_batch,
                   args.offset_adjustment)
    config = EvalConfig(temperatures=args.temperatures, offset_adjustment=args.offset_adjustment,
                        n_clusters=args.clusters, wise_lambda=args.wise_lambda,
                        calibrated=not args.per_batch, batch_size=args.batch_size)
    return EvalPlan(arch=arch, model_config=args.model_config,
                    checkpoints=tuple(args.checkpoints), heads=tuple(args.heads),
                    num_classes=num_classes, data=data, config=config,
                    device=args.device or default_device(), dtype=args.dtype,
                    normalize=not args.no_normalize, workers=args.workers,
                    output=args.output, plot=args.plot)


class _OnDevice:
    """Re-iterable view of a loader, moving batches to the device and dtype."""

    def __init__(self, loader, device, dtype):
        self.loader, self.device, self.dtype = loader, device, dtype

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for images, labels in checked_batches(self.loader):
            yield images.to(self.device, self.dtype), labels.to(self.device)


def build_classifier(plan: EvalPlan, device: str):
    """The interpolating classifier of the plan's checkpoints and heads, on ``device``."""
    from ..nn.classifier import DaWinClassifier
    from ..nn.vit import DaWinViT

    visuals = load_visuals(plan.arch.name, plan.checkpoints, plan.model_config)
    heads = [load_head(path) for path in plan.heads]
    return DaWinClassifier(DaWinViT.from_open_clip(visuals), heads,
                           normalize=plan.normalize).to(device=device,
                                                        dtype=DTYPES[plan.dtype])


def run_eval(plan: EvalPlan, run: Session | None = None, progress: bool = False) -> dict:
    """Load the models and the data, evaluate every method; returns the report.

    ``run``: this process's place under torchrun (``parallel.session``); None is one process.
    """
    from open_clip.transform import image_transform

    from .. import distributed

    run = run or Session(0, 1, plan.device)
    with distributed.shared_errors():  # a rank that cannot load stops every rank
        classifier = build_classifier(plan, run.device)
        dataset = load_dataset(plan.data.path, image_transform(plan.arch.image_size,
                                                               is_train=False))
    # This rank's whole global batches: the same batches as one process (see distributed).
    loader = torch.utils.data.DataLoader(distributed.shard(dataset, plan.config.batch_size),
                                         batch_size=plan.config.batch_size,
                                         num_workers=plan.workers, collate_fn=collate)
    batches = _OnDevice(loader, run.device, DTYPES[plan.dtype])
    results = evaluate(classifier, batches, plan.config, progress=progress,
                       source=f"dataset {plan.data.path}")
    return {"arch": plan.arch.name, "checkpoints": list(plan.checkpoints),
            "heads": list(plan.heads), "data": plan.data.path, "n": len(dataset),
            "classes": plan.num_classes, "device": plan.device, "dtype": plan.dtype,
            "world_size": run.world_size, "config": dataclasses.asdict(plan.config),
            "methods": {k: v for k, v in results.items() if not k.startswith("_")},
            "mixture": results.get("_mixture"),
            "mixture_per_sample_batches": results["_mixture_per_sample_batches"],
            "per_sample": {"coefficients": results["_coefficients"], **results["_per_sample"]},
            "_results": results}


def write_outputs(plan: EvalPlan, report: dict) -> None:
    """Print the table, then write the report (and the plot) atomically."""
    import json

    results = report["_results"]
    print(format_table({"accuracy": results}))
    fallback = report["mixture_per_sample_batches"]
    if fallback:
        print(f"note: {fallback} batch(es) held no more images than --clusters "
              f"{plan.config.n_clusters} and ran per-sample (exact DaWin)")
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    replaced = write_text(plan.output, json.dumps(public, indent=2, default=str) + "\n")
    print(f"{'replaced' if replaced else 'wrote'} {plan.output}")
    if plan.plot:
        from .plots import save_plot

        save_plot({os.path.basename(os.path.normpath(plan.data.path)): results}, plan.plot)
        print(f"saved {plan.plot}")


def progress_bar(desc: str) -> Callable[[Iterable], Iterable]:
    """A tqdm wrapper on stderr, shown only on a terminal."""
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, leave=False, disable=None, file=sys.stderr)
