"""Evaluate DaWin and its baselines on a labelled dataset.

``evaluate(classifier, batches, config)`` makes two passes over ``batches`` (any
re-iterable of ``(images, labels)``: a list, a DataLoader):

1. the expert pass: every model's logits on every image (one fused forward per batch),
   which score each model alone; from them, calibrated mode fits the mixture (and the
   offset statistics) on the whole set, as the paper does for an evaluation set. Given
   ``expert_logits`` (a cache of an earlier run's), this pass does not run;
2. per batch: WiSE-FT, the dynamic output ensemble and classifier selection (from the
   expert logits), DaWin per-sample and DaWin mixture.

In per-batch mode a batch of at most K images (the last one, say) runs per-sample, which is
exact DaWin; the report counts such batches (``_mixture_per_sample_batches``).

Each method's time counts what it needs: its own forward, plus the expert pass for the
methods built on the experts' logits, plus the mixture fit for the mixture. Each model
alone is timed as the expert pass (all M models in one fused forward); a cached expert
pass counts 0 s.

Under a process group (``torchrun``), ``batches`` are this rank's shard (whole global
batches, ``dawin_fast.distributed.shard``): the mixture is fitted once on every rank's
expert outputs, and the counts and per-sample results are gathered back in dataset order,
so every rank returns the report one process would (seconds: the slowest rank's).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

import torch
from tqdm import tqdm

from .. import distributed
from ..algorithm.coefficients import dynamic_classifier_selection, dynamic_output_ensemble
from ..nn.grouped import GroupedModel
from ..pipeline import DaWin
from .errors import UserError


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    temperatures: tuple[float, ...] | None = None
    offset_adjustment: bool = False
    n_clusters: int = 3
    wise_lambda: float = 0.5
    calibrated: bool = True  # fit the mixture on the whole set, else on each batch
    seed: int = 0
    batch_size: int = 256


class _Meter:
    def __init__(self) -> None:
        self.correct = 0
        self.count = 0
        self.seconds = 0.0
        self.predictions: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, labels: torch.Tensor, seconds: float) -> None:
        predictions = logits.argmax(-1)
        self.predictions.append(predictions.cpu())
        self.correct += int((predictions == labels.to(logits.device)).sum())
        self.count += labels.numel()
        self.seconds += seconds

    def report(self) -> dict:
        return {"accuracy": self.correct / max(self.count, 1), "correct": self.correct,
                "n": self.count, "seconds": self.seconds,
                "images_per_s": self.count / self.seconds if self.seconds > 0 else None}


def _check_finite(expert: torch.Tensor, images: torch.Tensor, batch: int, source: str) -> None:
    """Non-finite logits are bad input (images the model's arithmetic cannot take), not
    a bug: a ``UserError`` naming the data, before any coefficient is computed from them."""
    bad = ~torch.isfinite(expert).all(dim=(0, 2))
    if bool(bad.any()):
        peak = float(images.abs().max())
        raise UserError(
            f"{source}: the models' logits are NaN or infinite on {int(bad.sum())} image(s) "
            f"of batch {batch} ({images.dtype} pixels up to {peak:.3g}); expected images "
            f"normalised as the model expects, within its dtype's range")


def _timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds), synchronised with the GPU on both ends."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def method_names(num_models: int, wise_lambda: float = 0.5,
                 model_names: tuple[str, ...] | None = None) -> list[str]:
    names = list(model_names or [f"model {i}" for i in range(num_models)])
    if num_models == 2:
        names += [f"WiSE-FT (λ={wise_lambda:g})", "output ensemble", "classifier selection"]
    else:
        names += ["weight average"]
    return names + ["DaWin per-sample", "DaWin mixture"]


@torch.no_grad()
def evaluate(classifier: GroupedModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             config: EvalConfig = EvalConfig(), progress: bool = False,
             source: str = "the data", label: str = "",
             expert_logits: list[torch.Tensor] | None = None,
             keep_expert_logits: bool = False) -> dict:
    """Accuracy and throughput of every method; see the module docstring.

    ``progress``: tqdm bars over both passes (on stderr), their names prefixed with
    ``label``. ``source``: how errors about the data name it (e.g. "dataset PATH").
    ``expert_logits``: per batch of ``batches``, the experts' logits [M, B, C] (on the
    CPU) from an earlier run. ``keep_expert_logits``: the report's ``_expert_logits``
    holds them (to cache them).
    """
    if iter(batches) is batches:  # a one-shot iterator: keep it for the second pass
        batches = list(batches)
    m = classifier.num_models
    temps = config.temperatures or (1.0,) * m
    per_sample = DaWin(classifier, temperatures=temps, mode="per_sample",
                       offset_adjustment=config.offset_adjustment, seed=config.seed)
    mixture = DaWin(classifier, temperatures=temps, mode="mixture",
                    n_clusters=config.n_clusters, offset_adjustment=config.offset_adjustment,
                    seed=config.seed)
    names = method_names(m, config.wise_lambda)
    meters = {name: _Meter() for name in names}

    def bar(iterable, desc):
        desc = f"{label}: {desc}" if label else desc
        return tqdm(iterable, desc=desc, leave=False, disable=not progress)

    expert_all, expert_seconds = [], []
    if expert_logits is not None:
        expert_all, expert_seconds = list(expert_logits), [0.0] * len(expert_logits)
    else:
        with distributed.shared_errors():  # a failure on any rank stops every rank here
            for b, (images, _) in enumerate(bar(batches, "expert pass")):
                expert, seconds = _timed(per_sample.expert_logits, images)
                _check_finite(expert, images, b, source)
                expert_all.append(expert.cpu())
                expert_seconds.append(seconds)
    if sum(distributed.gather_objects(len(expert_all))) == 0:
        raise ValueError("evaluate: the dataset is empty")
    fit_seconds = 0.0
    if config.calibrated:  # per-batch logits: uncertainties computed batch by batch
        _, fit_seconds = _timed(mixture.calibrate_from_logits, expert_all)
        per_sample.offset = mixture.offset

    with distributed.shared_errors():
        coefficients, cluster_labels, truth, fallback_batches = _merged_passes(
            classifier, bar(batches, "merged passes"), expert_all, expert_seconds, config,
            per_sample, mixture, meters, names)
    meters["DaWin mixture"].seconds += fit_seconds

    report = _gathered(meters, coefficients, cluster_labels, truth, m)
    if keep_expert_logits:
        report["_expert_logits"] = expert_all
    report["_expert_pass_cached"] = expert_logits is not None
    report["_mixture_per_sample_batches"] = sum(distributed.gather_objects(fallback_batches))
    if mixture.mixture is not None:
        report["_mixture"] = {"means": mixture.mixture.means_.tolist(),
                              "weights": mixture.mixture.weights_.tolist()}
        if hasattr(mixture.mixture, "alphas_") and m == 2:
            report["_mixture"].update(alphas=mixture.mixture.alphas_.tolist(),
                                      betas=mixture.mixture.betas_.tolist())
    return report


def _merged_passes(classifier, batches, expert_all, expert_seconds, config, per_sample,
                   mixture, meters, names):
    """Pass 2 over this rank's batches: per-batch coefficients, clusters (-1: none), labels,
    and the count of per-batch-mode batches that ran per-sample."""
    m, temps = classifier.num_models, per_sample.temperatures
    coefficients, cluster_labels, truth = [], [], []
    fallback_batches = 0  # per-batch mode: batches of at most K images run per-sample
    for b, (images, labels) in enumerate(batches):
        truth.append(labels.cpu().long())
        expert = expert_all[b].to(images.device)
        t_expert = expert_seconds[b]
        if expert.shape[1] != images.shape[0]:
            raise ValueError(f"evaluate: expert logits of batch {b} hold {expert.shape[1]} "
                             f"images, the batch {images.shape[0]}")
        for i in range(m):  # each model alone is its expert pass
            meters[names[i]].add(expert[i], labels, t_expert)
        static = ([1 - config.wise_lambda, config.wise_lambda] if m == 2 else [1.0 / m] * m)
        out, s = _timed(classifier, images, torch.tensor(static))
        meters[names[m]].add(out, labels, s)
        if m == 2:
            lam = per_sample.weights(expert)[:, 1]
            out, s = _timed(dynamic_output_ensemble, expert[0], expert[1], lam, temps)
            meters["output ensemble"].add(out, labels, s + t_expert)
            (_, out), s = _timed(dynamic_classifier_selection, expert[0], expert[1], temps)
            meters["classifier selection"].add(out, labels, s + t_expert)
        details, s = _timed(per_sample.predict, images, True, expert_logits=expert)
        meters["DaWin per-sample"].add(details.logits, labels, s + t_expert)
        coefficients.append(details.coefficients.cpu())
        details, s = _timed(mixture.predict, images, True, expert_logits=expert)
        meters["DaWin mixture"].add(details.logits, labels, s + t_expert)
        if details.labels is not None:
            cluster_labels.append(details.labels.cpu())
        else:
            fallback_batches += 1
            cluster_labels.append(torch.full((images.shape[0],), -1, dtype=torch.int64))
    return coefficients, cluster_labels, truth, fallback_batches


def _gathered(meters: dict[str, _Meter], coefficients, cluster_labels, truth, m: int) -> dict:
    """Every method's report and the per-sample results, all ranks' in dataset order."""

    def rows(parts, empty):
        return distributed.gather_rows(torch.cat(parts) if parts else empty)

    no_ints = torch.empty(0, dtype=torch.int64)
    labels = rows(truth, no_ints)
    seconds = distributed.gather_objects({k: meter.seconds for k, meter in meters.items()})
    report, predictions = {}, {}
    for name, meter in meters.items():
        predicted = rows(meter.predictions, no_ints)
        total = _Meter()
        total.correct, total.count = int((predicted == labels).sum()), labels.numel()
        total.seconds = max(s[name] for s in seconds)  # the ranks run side by side
        report[name] = total.report()
        predictions[name] = predicted.tolist()
    report["_coefficients"] = rows(coefficients, torch.empty(0, m)).tolist()
    report["_per_sample"] = {"labels": labels.tolist(),
                             "cluster": rows(cluster_labels, no_ints).tolist(),
                             "predictions": predictions}
    report["_world_size"] = distributed.world_size()
    return report


def images_per_second(count: int, seconds: float) -> str:
    """Throughput with three significant digits (slow methods run at well under 1/s on a
    loaded CPU: rounding to an integer showed 0); whole numbers from 100 up."""
    if seconds <= 0:
        return "-"
    rate = count / seconds
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def format_table(sets: dict[str, dict], model_names: tuple[str, ...] | None = None) -> str:
    """A text table: one row per method, accuracy per set and throughput."""
    set_names = list(sets)
    first = sets[set_names[0]]
    methods = [k for k in first if not k.startswith("_")]
    labels = dict(zip(methods, methods, strict=True))
    if model_names:
        for i, name in enumerate(model_names):
            labels[f"model {i}"] = f"model {i} ({name})"
    width = max(len(v) for v in labels.values()) + 2
    header = f"{'method':<{width}}" + "".join(f"{s:>18}" for s in set_names) + f"{'images/s':>12}"
    lines = [header, "-" * len(header)]
    for method in methods:
        accs = "".join(f"{100 * sets[s][method]['accuracy']:>17.2f}%" for s in set_names)
        seconds = sum(sets[s][method]["seconds"] for s in set_names)
        count = sum(sets[s][method]["n"] for s in set_names)
        speed = f"{images_per_second(count, seconds):>12}"
        lines.append(f"{labels[method]:<{width}}{accs}{speed}")
    return "\n".join(lines)


def paper_names(num_models: int, wise_lambda: float = 0.5) -> dict[str, str]:
    """The rows of the paper's table: internal method name -> its name there (two models:
    model 0 is the zero-shot model, model 1 the fine-tuned one). Classifier selection is
    left out (the paper's table does not show it; the full report keeps it)."""
    rows = ({"model 0": "zero-shot", "model 1": "fine-tuned",
             f"WiSE-FT (λ={wise_lambda:g})": f"WiSE-FT (λ={wise_lambda:g})",
             "output ensemble": "output ensemble"} if num_models == 2
            else {**{f"model {i}": f"model {i}" for i in range(num_models)},
                  "weight average": "weight average"})
    return {**rows, "DaWin per-sample": "DaWin (no mixture)", "DaWin mixture": "DaWin"}


def ood_average(accuracies: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """Per method, the mean accuracy over every dataset but the first (the in-distribution
    one); None with a single dataset."""
    names = list(accuracies)[1:]
    if not names:
        return None
    methods = accuracies[names[0]]
    return {m: sum(accuracies[n][m] for n in names) / len(names) for m in methods}


def format_paper_table(accuracies: dict[str, dict[str, float]],
                       average: dict[str, float] | None) -> str:
    """The paper's table: a row per method, a column per dataset (the first is the
    in-distribution one), then the OOD average; accuracies in %."""
    columns = {**accuracies, **({"OOD avg": average} if average is not None else {})}
    methods = list(next(iter(accuracies.values())))
    width = max(len(m) for m in methods) + 2
    cells = {name: max(len(name), 6) + 2 for name in columns}
    header = f"{'method':<{width}}" + "".join(f"{n:>{cells[n]}}" for n in columns)
    lines = [header, "-" * len(header)]
    for method in methods:
        lines.append(f"{method:<{width}}" + "".join(
            f"{100 * column[method]:>{cells[n]}.2f}" for n, column in columns.items()))
    return "\n".join(lines)
