"""``dawin-fast eval``: validate everything first (``prepare_eval``), then run (``run_eval``).

``prepare_eval`` does only cheap work: argument consistency, output paths, the
architecture built on the meta device (with the activation the checkpoints were trained
with), checkpoint headers (keys and shapes, in any layout ``checkpoints.Layout`` knows),
heads against the model's feature size, each dataset's layout, classes and images
(PIL's ``verify()``). Any mistake is a one-line ``UserError`` before a model loads.
``run_eval`` then loads the models once and evaluates every dataset with its own mixture
and offset statistics; ``write_outputs`` prints the paper's table and writes the report
(atomically). Under torchrun every rank calls ``prepare_eval``, ``run_eval`` on its shard
of whole batches (``dawin_fast.distributed.shard``; the report comes back gathered in
dataset order on every rank), and rank 0 alone ``write_outputs``.

Caches (``--cache-dir``): zero-shot heads, and each model's logits on each dataset (its
expert pass), keyed by the contents of every file they come from, so a re-run with other
DaWin settings runs no model alone again and a changed file is never served stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence

import torch

from . import options
from .checkpoints import (
    TRUST_FLAG,
    ArchInfo,
    CheckpointError,
    CheckpointInfo,
    inspect_arch,
    inspect_checkpoint,
    inspect_head,
    load_checkpoint,
    load_head,
    load_tensors,
    register_model_config,
    resolve_activation,
    zero_shot_head_weights,
)
from .datasets import (
    DataInfo,
    DataSpec,
    checked_batches,
    collate,
    inspect_data,
    load_data,
)
from .errors import UserError
from .evaluate import EvalConfig, evaluate, format_paper_table, ood_average, paper_names
from .options import DTYPES, default_device
from .outputs import atomic_path, check_distinct, check_writable, write_text
from .parallel import Session


@dataclasses.dataclass(frozen=True)
class HeadSource:
    """Where model i's head comes from: a ``--heads`` file, the checkpoint's own
    classification head, or a zero-shot head built from the checkpoint's text tower."""

    kind: str  # "file", "checkpoint" or "zero-shot"
    path: str  # the head file, or the checkpoint
    shape: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """Everything ``run_eval`` needs, checked."""

    arch: ArchInfo
    model_config: str | None
    checkpoints: tuple[CheckpointInfo, ...]
    heads: tuple[HeadSource, ...]
    num_classes: int
    datasets: tuple[DataInfo, ...]
    config: EvalConfig
    device: str
    dtype: str
    normalize: bool
    workers: int
    output: str
    plot: str | None
    trust_pickles: bool = False
    class_names: tuple[str, ...] | None = None  # zero-shot heads' classes (None: ImageNet's)
    templates: tuple[str, ...] | None = None  # their prompts (None: OpenAI's ImageNet ones)
    cache_dir: str | None = None
    notes: tuple[str, ...] = ()  # printed before the run (an activation corrected, ...)

    @property
    def data(self) -> DataInfo:
        """The in-distribution dataset (the first ``--data``)."""
        return self.datasets[0]


def check_clusters(clusters: int, n: int, batch_size: int, per_batch: bool,
                   offset_adjustment: bool, what: str = "") -> None:
    """The mixture needs more images than clusters wherever it is fitted (the whole set,
    or each batch with ``--per-batch``); the offset statistics need 2 images. ``what``
    names the dataset in the messages."""
    on = f" on {what}" if what else ""
    if per_batch:
        per_fit = min(batch_size, n)
        if clusters >= per_fit:
            fix = f"use --clusters < {per_fit}, " if per_fit > 1 else ""
            raise UserError(
                f"--clusters {clusters}: with --per-batch the mixture is fitted on each batch "
                f"of {per_fit} images{on} and needs more images than clusters; {fix}use a "
                f"larger --batch-size, or drop --per-batch")
        if offset_adjustment and (per_fit < 2 or n % batch_size == 1):
            raise UserError(
                f"--offset-adjustment with --per-batch: a batch{on} would hold 1 image and "
                f"the offset statistics need 2; choose another --batch-size than {batch_size}")
    else:
        if clusters >= n:
            raise UserError(f"--clusters {clusters}: the mixture is fitted on the {n} images"
                            f"{on} and needs more images than clusters; use --clusters < {n}")
        if offset_adjustment and n < 2:
            raise UserError(f"--offset-adjustment: the offset statistics need at least 2 "
                            f"images{on}")


def _lines(path: str, option: str) -> tuple[str, ...]:
    """The non-blank lines of a text file (class names, templates)."""
    if not os.path.isfile(path):
        raise UserError(f"{option} {path}: not found")
    try:
        with open(path, encoding="utf-8") as f:
            lines = tuple(line.strip() for line in f if line.strip())
    except UnicodeDecodeError:
        raise UserError(f"{option} {path}: not a UTF-8 text file") from None
    if not lines:
        raise UserError(f"{option} {path}: empty; expected one entry per line")
    return lines


def _zero_shot_texts(args: argparse.Namespace) -> tuple[tuple[str, ...] | None,
                                                        tuple[str, ...] | None]:
    names = _lines(args.class_names, "--class-names") if args.class_names else None
    templates = _lines(args.templates, "--templates") if args.templates else None
    for template in templates or ():
        if template.count("{}") != 1:
            raise UserError(f"--templates {args.templates}: template {template!r} needs one "
                            f"{{}} where the class name goes (e.g. 'a photo of a {{}}.')")
    return names, templates


def _imagenet_class_names() -> tuple[str, ...]:
    from open_clip import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


def _head_sources(args: argparse.Namespace, infos: Sequence[CheckpointInfo], arch: ArchInfo,
                  class_names: tuple[str, ...] | None) -> list[HeadSource]:
    """Model i's head: ``--heads`` file i, else the checkpoint's classification head, else
    a zero-shot head from its text tower."""
    from .checkpoints import HeadInfo, check_heads

    sources = []
    for i, info in enumerate(infos):
        if args.heads:
            head = inspect_head(args.heads[i], args.trust_pickles)
            sources.append(HeadSource("file", head.path, head.shape))
        elif info.head_shape is not None:
            sources.append(HeadSource("checkpoint", info.spec, info.head_shape))
        elif info.has_text:
            count = len(class_names or _imagenet_class_names())
            sources.append(HeadSource("zero-shot", info.spec, (count, arch.feature_dim)))
        else:
            raise UserError(f"checkpoint {info.spec}: holds no classification head and no "
                            f"text tower to build a zero-shot head from; pass --heads (one "
                            f"head file per checkpoint)")
    described = [HeadInfo(s.path if s.kind == "file" else f"of checkpoint {s.path}", s.shape,
                          False) for s in sources]
    check_heads(described, arch)
    return sources


def prepare_eval(args: argparse.Namespace,
                 progress: Callable[[Iterable], Iterable] = iter) -> EvalPlan:
    """Validate the arguments and inspect the files; a ``UserError`` on the first mistake."""
    m = len(args.checkpoints)
    if m < 2:
        raise UserError(f"--checkpoints: eval needs at least two checkpoints, got {m}")
    if args.heads is not None and len(args.heads) != m:
        raise UserError(f"--heads: {m} checkpoints but {len(args.heads)} heads; expected one "
                        f"head per checkpoint")
    if args.offset_adjustment and m != 2:
        raise UserError(f"--offset-adjustment: defined for two models, got {m} checkpoints")
    if args.temperatures is not None and len(args.temperatures) != m:
        raise UserError(f"--temperatures: {len(args.temperatures)} values for {m} models; "
                        f"expected {m}")
    specs: list[DataSpec] = list(args.data)
    names = [s.name for s in specs]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise UserError(f"--data: two datasets named {twice!r}; give each its own NAME=PATH")
    check_writable(args.output, "--output")
    if args.plot:
        from .plots import check_plot_path

        check_plot_path(args.plot)
    inputs = {"--checkpoints": list(args.checkpoints), "--heads": list(args.heads or []),
              "--data": [s.path for s in specs], "--model-config": [args.model_config],
              "--class-names": [args.class_names], "--templates": [args.templates]}
    check_distinct({"--output": args.output, "--plot": args.plot}, inputs)
    cache_dir = None if args.no_cache else (args.cache_dir or options.default_cache_dir())
    if cache_dir and os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise UserError(f"--cache-dir {cache_dir}: exists and is not a directory")

    if args.model_config is not None:
        register_model_config(args.model_config)
    base = inspect_arch(args.arch)
    infos = [inspect_checkpoint(spec, base, args.trust_pickles) for spec in args.checkpoints]
    quick_gelu, note = resolve_activation(args.arch, infos)
    arch = base if quick_gelu == base.quick_gelu else inspect_arch(args.arch, quick_gelu)
    class_names, templates = _zero_shot_texts(args)
    heads = _head_sources(args, infos, arch, class_names)
    num_classes = heads[0].shape[0]
    datasets = []
    for spec in specs:
        info = inspect_data(spec, arch, num_classes, progress)
        check_clusters(args.clusters, info.size, args.batch_size, args.per_batch,
                       args.offset_adjustment, f"{spec.name}" if len(specs) > 1 else "")
        datasets.append(info)
    config = EvalConfig(temperatures=args.temperatures, offset_adjustment=args.offset_adjustment,
                        n_clusters=args.clusters, wise_lambda=args.wise_lambda,
                        calibrated=not args.per_batch, batch_size=args.batch_size,
                        seed=args.seed)
    return EvalPlan(arch=arch, model_config=args.model_config, checkpoints=tuple(infos),
                    heads=tuple(heads), num_classes=num_classes, datasets=tuple(datasets),
                    config=config, device=args.device or default_device(), dtype=args.dtype,
                    normalize=not args.no_normalize, workers=args.workers,
                    output=args.output, plot=args.plot, trust_pickles=args.trust_pickles,
                    class_names=class_names, templates=templates,
                    cache_dir=cache_dir,
                    notes=(note,) if note else ())


# ----------------------------------------------------------------------------- caches

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> str:
    """SHA-256 of a file's contents (memoised by path, size and modification time)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _checkpoint_identity(info: CheckpointInfo) -> str:
    # open_clip names its pretrained files by name and version: the name is their identity.
    return f"pretrained:{info.spec}" if info.pretrained else file_digest(info.spec)


def _zero_shot_key(plan: EvalPlan, info: CheckpointInfo) -> str:
    return _key("zero-shot head", _checkpoint_identity(info), plan.arch.name,
                plan.arch.quick_gelu, plan.class_names, plan.templates)


def _head_identity(plan: EvalPlan, i: int) -> str:
    head = plan.heads[i]
    if head.kind == "file":
        return file_digest(head.path)
    return head.kind if head.kind == "checkpoint" else _zero_shot_key(plan, plan.checkpoints[i])


def _data_identity(info: DataInfo) -> str:
    if info.samples is None:
        return file_digest(info.path)
    return _key("images", [(os.path.relpath(p, info.path), y, file_digest(p))
                           for p, y in info.samples])


def expert_cache_paths(plan: EvalPlan, info: DataInfo) -> list[str]:
    """Per model, the file caching its logits on ``info`` (its expert pass): keyed by the
    contents of its checkpoint, head and images, and everything else they depend on."""
    data = _data_identity(info)
    return [os.path.join(plan.cache_dir, "logits", _key(
        "expert logits", _checkpoint_identity(ck), _head_identity(plan, i), plan.arch.name,
        plan.arch.quick_gelu, plan.normalize, plan.dtype, torch.device(plan.device).type,
        data, info.class_groups, info.border, plan.arch.image_size) + ".pt")
        for i, ck in enumerate(plan.checkpoints)]


def _save_tensor(tensor: torch.Tensor, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(tensor.contiguous(), tmp)


def _cached_expert_logits(paths: Sequence[str], info: DataInfo, batch_size: int
                          ) -> list[torch.Tensor] | None:
    """This rank's batches of cached expert logits [M, B, K]; None unless every model's
    cache exists on every rank."""
    from .. import distributed

    found = all(os.path.isfile(p) for p in paths)
    if not all(distributed.gather_objects(found)):
        return None
    logits = torch.stack([load_tensors(p, "cached logits") for p in paths])  # [M, N, K]
    if logits.shape[1] != info.size:
        raise CheckpointError(f"cached logits {paths[0]}: {logits.shape[1]} images, the "
                              f"dataset {info.size}; remove the cache directory")
    rows = distributed.shard_range(info.size, batch_size)
    return [logits[:, b:min(b + batch_size, rows.stop)].contiguous()  # dtype as computed
            for b in range(rows.start, rows.stop, batch_size)]


def _store_expert_logits(paths: Sequence[str], batches: Sequence[torch.Tensor],
                         classes: int) -> None:
    """Every rank's expert logits [M, B, K] per batch, in dataset order, written by rank 0
    (one file per model, [N, K])."""
    from .. import distributed

    mine = torch.cat([b.transpose(0, 1) for b in batches]) if batches else \
        torch.empty(0, len(paths), classes)
    everything = distributed.gather_rows(mine)  # [N, M, K]
    if distributed.rank() == 0:
        for i, path in enumerate(paths):
            _save_tensor(everything[:, i].clone(), path)


# ------------------------------------------------------------------------------- run


class _OnDevice:
    """Re-iterable view of a loader, moving batches to the device and dtype."""

    def __init__(self, loader, device, dtype):
        self.loader, self.device, self.dtype = loader, device, dtype

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for images, labels in checked_batches(self.loader):
            yield images.to(self.device, self.dtype), labels.to(self.device)


def zero_shot_head(plan: EvalPlan, info: CheckpointInfo, clip: torch.nn.Module, device: str
                   ) -> torch.Tensor:
    """[C, D] = logit scale · the normalised mean text embedding of each class over the
    templates (open_clip's ``build_zero_shot_classifier``), from ``clip``'s text tower;
    cached in ``plan.cache_dir``."""
    path = (os.path.join(plan.cache_dir, "heads", _zero_shot_key(plan, info) + ".pt")
            if plan.cache_dir else None)
    if path and os.path.isfile(path):
        return load_tensors(path, "cached head").float()
    head = zero_shot_head_weights(clip, plan.arch.name, plan.class_names, plan.templates,
                                  device)
    if path:
        from .. import distributed

        if distributed.rank() == 0:
            _save_tensor(head, path)
    return head


def build_classifier(plan: EvalPlan, device: str):
    """The interpolating classifier of the plan's checkpoints and heads, on ``device``."""
    from ..nn.classifier import DaWinClassifier
    from ..nn.vit import DaWinViT

    visuals, heads = [], []
    for info, source in zip(plan.checkpoints, plan.heads, strict=True):
        loaded = load_checkpoint(info.spec, plan.arch, plan.trust_pickles,
                                 with_clip=source.kind == "zero-shot")
        visuals.append(loaded.visual)
        if source.kind == "file":
            heads.append(load_head(source.path, plan.trust_pickles))
        elif source.kind == "checkpoint":
            heads.append(loaded.head)
        else:
            heads.append(zero_shot_head(plan, info, loaded.clip, device))
    return DaWinClassifier(DaWinViT.from_open_clip(visuals), heads,
                           normalize=plan.normalize).to(device=device,
                                                        dtype=DTYPES[plan.dtype])


def _evaluate_dataset(plan: EvalPlan, info: DataInfo, classifier, run: Session,
                      progress: bool) -> dict:
    from open_clip.transform import image_transform

    from .. import distributed
    from .projection import ProjectedClassifier

    with distributed.shared_errors():
        dataset = load_data(info, image_transform(plan.arch.image_size, is_train=False))
    model = ProjectedClassifier(classifier, info.class_groups) if info.class_groups \
        else classifier
    batch = plan.config.batch_size
    # This rank's whole global batches: the same batches as one process (see distributed).
    loader = torch.utils.data.DataLoader(distributed.shard(dataset, batch), batch_size=batch,
                                         num_workers=plan.workers, collate_fn=collate)
    paths = expert_cache_paths(plan, info) if plan.cache_dir else None
    cached = _cached_expert_logits(paths, info, batch) if paths else None
    results = evaluate(model, _OnDevice(loader, run.device, DTYPES[plan.dtype]), plan.config,
                       progress=progress, source=f"dataset {info.path}", label=info.name,
                       expert_logits=cached, keep_expert_logits=bool(paths))
    if paths and cached is None:
        classes = len(info.class_groups) if info.class_groups else plan.num_classes
        _store_expert_logits(paths, results["_expert_logits"], classes)
    return results


def run_eval(plan: EvalPlan, run: Session | None = None, progress: bool = False) -> dict:
    """Load the models once, evaluate every method on every dataset (each with its own
    mixture and offset statistics); returns the report.

    ``run``: this process's place under torchrun (``parallel.session``); None is one process.
    """
    from .. import distributed

    run = run or Session(0, 1, plan.device)
    with distributed.shared_errors():  # a rank that cannot load stops every rank
        classifier = build_classifier(plan, run.device)
    rows = paper_names(len(plan.checkpoints), plan.config.wise_lambda)
    raw, details, accuracies = {}, {}, {}
    for info in plan.datasets:
        results = _evaluate_dataset(plan, info, classifier, run, progress)
        results.pop("_expert_logits", None)
        raw[info.name] = results
        accuracies[info.name] = {paper: results[name]["accuracy"] for name, paper in rows.items()}
        details[info.name] = {
            "path": info.path, "layout": info.layout, "n": info.size,
            "classes": len(info.class_groups) if info.class_groups else plan.num_classes,
            "methods": {k: v for k, v in results.items() if not k.startswith("_")},
            "expert_pass_cached": results["_expert_pass_cached"],
            "mixture": results.get("_mixture"),
            "mixture_per_sample_batches": results["_mixture_per_sample_batches"],
            "per_sample": {"coefficients": results["_coefficients"], **results["_per_sample"]}}
    return {"arch": plan.arch.name,
            "activation": "QuickGELU" if plan.arch.quick_gelu else "GELU",
            "checkpoints": [c.spec for c in plan.checkpoints],
            "heads": [f"{h.kind}: {h.path}" for h in plan.heads],
            "device": plan.device, "dtype": plan.dtype, "world_size": run.world_size,
            "config": dataclasses.asdict(plan.config),
            "datasets": accuracies, "ood_average": ood_average(accuracies),
            "results": details, "_results": raw}


def write_outputs(plan: EvalPlan, report: dict) -> None:
    """Print the table, then write the report (and the plot) atomically."""
    import json

    print(format_paper_table(report["datasets"], report["ood_average"]))
    for name, detail in report["results"].items():
        fallback = detail["mixture_per_sample_batches"]
        if fallback:
            print(f"note: {name}: {fallback} batch(es) held no more images than --clusters "
                  f"{plan.config.n_clusters} and ran per-sample (exact DaWin)")
    cached = [n for n, d in report["results"].items() if d["expert_pass_cached"]]
    if cached:
        print(f"note: expert logits from the cache for {', '.join(cached)}")
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    replaced = write_text(plan.output, json.dumps(public, indent=2, default=str) + "\n")
    print(f"{'replaced' if replaced else 'wrote'} {plan.output}")
    if plan.plot:
        from .plots import save_plot

        save_plot(report["_results"], plan.plot)
        print(f"saved {plan.plot}")


def progress_bar(desc: str) -> Callable[[Iterable], Iterable]:
    """A tqdm wrapper on stderr, shown only on a terminal."""
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, leave=False, disable=None, file=sys.stderr)


__all__ = ["TRUST_FLAG", "EvalPlan", "HeadSource", "prepare_eval", "run_eval", "write_outputs"]
