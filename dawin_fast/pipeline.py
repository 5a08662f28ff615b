"""``DaWin``: the end-to-end method on M models.

Per batch: M expert passes (one fused forward over the batch repeated M times, each copy
under one model's one-hot coefficient row), per-sample coefficients from the experts'
uncertainty, optionally a mixture over them, then one fused forward of every sample
through its interpolation. Logits come back in the caller's order.

Two usage patterns:

* per batch: ``dawin.predict(images)`` fits the mixture (and the offset statistics) on
  each batch;
* calibrated: ``dawin.calibrate(batches)`` fits them once over a dataset, then
  ``dawin.predict(images)`` applies the fitted mixture batch by batch. Under a process
  group (``torchrun``), each rank passes its shard (``dawin_fast.distributed.shard``) and
  the fit covers all shards in rank order, as one process would on the whole set.

Two weight layouts:

* ``DaWin``: M models to interpolate convexly (M=2: zero-shot and fine-tuned). Coefficient
  rows p = softmax_i(-H_i) (for M=2, [1-λ, λ] with λ = e^{-H_1}/(e^{-H_0}+e^{-H_1})); Beta
  mixture on λ for M=2, Dirichlet mixture on p for M>2.
* ``DaWinMultiTask``: task arithmetic, weights stacked as [θ_pre, τ_1, ..., τ_T] (see
  ``task_vectors``); rows [1, s·p_1, ..., s·p_T]; heads are not interpolated. On a batch
  or dataset of a known task d, every task model is scored through head d (the paper's
  protocol); on inputs of unknown task, task model t through head t (``MULTITASK_PROTOCOLS``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .algorithm.coefficients import TEMPERATURES, coefficients_from_entropies, offset_terms
from .algorithm.expertise import entropy, max_logit, max_softmax
from .algorithm.grouping import two_model_rows
from .algorithm.mixture import BetaMixture, DirichletMixture
from .nn.grouped import GroupedModel

EXPERTISE = ("entropy", "max_logit", "max_softmax")


@dataclasses.dataclass
class DaWinOutput:
    """What ``predict(..., return_details=True)`` returns (all in the caller's order)."""

    logits: torch.Tensor  #: [B, C] of the interpolated models
    coefficients: torch.Tensor  #: [B, M] per-sample rows from the experts
    applied: torch.Tensor  #: [B, M] rows actually used (cluster means in mixture mode)
    labels: torch.Tensor | None  #: [B] cluster of each sample (mixture mode), else None
    #: [M, B, C] each expert's logits (DaWinMultiTask: [T, B, C] through the evaluated
    #: task's head, or T tensors [B, C_t] through their own heads)
    expert_logits: torch.Tensor | list[torch.Tensor]


def uncertainty(logits: torch.Tensor, expertise: str, temperature: float) -> torch.Tensor:
    """Per-sample uncertainty (lower = more expert) under one of ``EXPERTISE``."""
    if expertise == "entropy":
        return entropy(logits, temperature)
    if expertise == "max_logit":
        return -max_logit(logits)
    if expertise == "max_softmax":
        return -max_softmax(logits, temperature)
    raise ValueError(f"expertise must be one of {EXPERTISE}, got {expertise!r}")


IMAGE_KEYS = ("images", "pixel_values")


def batch_images(batch, index: int, fn: str) -> torch.Tensor:
    """The images of one calibration batch: a tensor, the first item of a tuple or list
    (``(images, labels)`` from a DataLoader), or a dict's ``IMAGE_KEYS`` entry."""
    images = batch
    if isinstance(batch, (tuple, list)) and batch:
        images = batch[0]
    elif isinstance(batch, dict):
        images = next((batch[k] for k in IMAGE_KEYS if k in batch), None)
    if not isinstance(images, torch.Tensor):
        got = (f"a dict with keys {sorted(map(str, batch))}" if isinstance(batch, dict)
               else f"a {type(batch).__name__}")
        raise TypeError(f"{fn}: batch {index} is {got}; expected an image tensor [B, C, H, W], "
                        f"an (images, labels) pair, or a dict with 'images'")
    return images


def _check_images(images, fn: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{fn}: images must be a tensor [B, ...], got {type(images).__name__}")


def _image_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The [C, H, W] a model's images must have, where it says (DaWinViT, a classifier or
    encoder around one); None for models that check their own input."""
    for candidate in (model, getattr(model, "encoder", None)):
        shape = getattr(candidate, "image_shape", None)
        if shape is not None:
            return tuple(shape)
    return None


def _check_image_shape(model: nn.Module, images: torch.Tensor, fn: str) -> None:
    """Before the expert pass stacks M copies of the batch: an error shows the caller's
    shape, not the stacked one."""
    _check_images(images, fn)
    shape = _image_shape(model)
    if shape is not None and (images.dim() != len(shape) + 1
                              or tuple(images.shape[1:]) != shape):
        raise ValueError(f"{fn}: images must be [B, {', '.join(map(str, shape))}], got "
                         f"{list(images.shape)}")


def _check_mode(mode) -> None:
    if isinstance(mode, str):
        if mode not in ("mixture", "per_sample"):
            raise ValueError(f"mode must be 'mixture', 'per_sample', or a fixed coefficient "
                             f"(λ or a row), got {mode!r}")


class _Base:
    """Mode handling shared by DaWin, DaWinMultiTask and DaWinLM."""

    #: What the empty-calibration error calls the samples (``_fit``).
    _calibration_items = "samples"

    def __init__(self, num_experts: int, temperatures, mode, n_clusters: int, expertise: str,
                 seed: int) -> None:
        _check_mode(mode)
        if expertise not in EXPERTISE:
            raise ValueError(f"expertise must be one of {EXPERTISE}, got {expertise!r}")
        if temperatures is None:
            temperatures = [1.0] * num_experts
        elif isinstance(temperatures, str):  # a model name, as coefficients_two takes
            if num_experts != 2 or temperatures not in TEMPERATURES:
                raise ValueError(f"temperatures: a model name gives the authors' CLIP pair "
                                 f"(zero-shot, fine-tuned) for two models; known: "
                                 f"{sorted(TEMPERATURES)}; got {temperatures!r} for "
                                 f"{num_experts} models")
            temperatures = TEMPERATURES[temperatures]
        try:
            temperatures = [float(t) for t in temperatures]
        except (TypeError, ValueError):
            raise ValueError(f"temperatures must be {num_experts} positive numbers or a model "
                             f"name ({', '.join(sorted(TEMPERATURES))}), got "
                             f"{temperatures!r}") from None
        if len(temperatures) != num_experts or any(not t > 0 for t in temperatures):
            raise ValueError(f"temperatures must be {num_experts} positive numbers, "
                             f"got {temperatures}")
        if not isinstance(n_clusters, int) or n_clusters < 1:
            raise ValueError(f"n_clusters must be an int >= 1, got {n_clusters!r}")
        self.temperatures = temperatures
        self.mode = mode
        self.n_clusters = n_clusters
        self.expertise = expertise
        self.seed = seed

    def _uncertainties(self, expert_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([uncertainty(z.float(), self.expertise, t)
                            for z, t in zip(expert_logits, self.temperatures, strict=True)])

    def _new_mixture(self, num_components: int):
        cls = BetaMixture if self._mixture_on_lambda else DirichletMixture
        return cls(n_components=num_components, seed=self.seed)

    def _mixture_input(self, weights: torch.Tensor) -> np.ndarray:
        """Beta mixture on λ (the weight on model 1) or Dirichlet on the weights p."""
        w = weights.detach().double().cpu().numpy()
        return w[:, 1] if self._mixture_on_lambda else w

    def _gather_for_fit(self, parts: list[torch.Tensor], width: int, what: str
                        ) -> torch.Tensor | None:
        """All ranks' per-sample rows [N, width] in rank order, on rank 0 (None elsewhere).

        ``parts``: this rank's rows, batch by batch. In one process, their concatenation.
        """
        local = torch.cat(parts) if parts else torch.empty(0, width)
        distributed.check_distinct_shards(local, what)
        return distributed.gather_rows(local, dst=0)

    def _fit(self, p: torch.Tensor):
        """The mixture fitted on the per-sample weights p [N, ·] that calibrate gathered, or
        None outside the mixture mode (DaWin overrides it: it fits offset terms too)."""
        if p.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}.calibrate: no batches (no calibration "
                             f"{self._calibration_items})")
        if self.mode != "mixture":
            return None
        return self._new_mixture(self.n_clusters).fit(self._mixture_input(p))

    def _mixture_means(self, mixture) -> torch.Tensor:
        means = torch.as_tensor(mixture.means_, dtype=torch.float32)
        return two_model_rows(means) if self._mixture_on_lambda else means

    def _cluster(self, weights: torch.Tensor, mixture):
        """(labels [B], component weights [G, ·]) for the mixture mode, or None.

        ``mixture``: the one fitted by calibrate, or None to fit one on these weights."""
        if mixture is None:
            if weights.shape[0] <= self.n_clusters:
                return None  # no fewer clusters than samples: per-sample is exact DaWin
            mixture = self._new_mixture(self.n_clusters).fit(self._mixture_input(weights))
        labels = torch.as_tensor(mixture.predict(self._mixture_input(weights)))
        return labels, self._mixture_means(mixture)


class DaWin(_Base):
    """DaWin on a ``DaWinClassifier`` (or any ``GroupedModel`` returning logits) of M models.

    Args:
        model: the interpolating classifier, e.g.
            ``DaWinClassifier(DaWinViT.from_open_clip([zs.visual, ft.visual]), [h_zs, h_ft])``.
        temperatures: M softmax temperatures for the expertise (default 1.0 each), or for
            two models an open_clip model name (``"ViT-B-32"``): the authors' CLIP values
            in ``dawin_fast.TEMPERATURES``.
        mode: ``"mixture"`` (K clusters, each at its component mean), ``"per_sample"``
            (exact: every sample its own coefficients), a float λ (static: [1-λ, λ]), or a
            fixed row of M coefficients (static: WiSE-FT, weight averaging).
        n_clusters: K of the mixture (a batch of at most K samples runs per-sample).
        offset_adjustment: M=2 only: the paper's offset adjustment (from each batch's
            entropies, or from the calibration set after ``calibrate``).
        expertise: ``"entropy"`` (the paper's default), ``"max_logit"`` or ``"max_softmax"``.
        seed: seed of the mixture's k-means initialisation.
    """

    def __init__(self, model: GroupedModel, temperatures: Sequence[float] | None = None,
                 mode: str | float | Sequence[float] = "mixture", n_clusters: int = 3,
                 offset_adjustment: bool = False, expertise: str = "entropy",
                 seed: int = 0) -> None:
        if not isinstance(model, GroupedModel):
            raise TypeError("DaWin: model must be a dawin_fast GroupedModel (DaWinClassifier, "
                            "DaWinViT, or what dawinize returns)")
        super().__init__(model.num_models, temperatures, mode, n_clusters, expertise, seed)
        if model.num_models < 2:
            raise ValueError("DaWin: needs at least two models")
        if offset_adjustment and (model.num_models != 2 or expertise != "entropy"):
            raise ValueError("DaWin: offset_adjustment is defined for two models scored by "
                             "entropy (its statistics assume non-negative uncertainties)")
        self.model = model
        self.num_models = model.num_models
        self.offset_adjustment = offset_adjustment
        self.offset = None  # (b, w) fitted by calibrate()
        self.mixture = None  # fitted by calibrate()
        self._mixture_on_lambda = self.num_models == 2
        self._static = None if isinstance(mode, str) else self._static_row(mode)

    def _static_row(self, mode) -> torch.Tensor:
        row = torch.as_tensor(mode, dtype=torch.float32).reshape(-1)
        if row.numel() == 1 and self.num_models == 2:
            row = torch.cat([1 - row, row])
        if row.numel() != self.num_models or not bool(torch.isfinite(row).all()):
            raise ValueError(f"DaWin: a fixed mode needs λ (two models) or {self.num_models} "
                             f"finite coefficients, got {mode!r}")
        return row

    @torch.no_grad()
    def expert_logits(self, images: torch.Tensor) -> torch.Tensor:
        """[M, B, C]: each model's own logits, from one fused pass over M copies."""
        _check_image_shape(self.model, images, "DaWin")
        batch = images.shape[0]
        stacked = images.unsqueeze(0).expand(self.num_models, *images.shape)
        labels = torch.arange(self.num_models, device=images.device).repeat_interleave(batch)
        eye = torch.eye(self.num_models, device=images.device)
        logits = self.model(stacked.reshape(-1, *images.shape[1:]), eye, cluster_labels=labels)
        return logits.reshape(self.num_models, batch, logits.shape[-1])  # B may be 0

    def weights(self, expert_logits: torch.Tensor) -> torch.Tensor:
        """Per-sample coefficient rows [B, M] (rows sum to 1) from the experts' logits."""
        return self._weights_from(self._uncertainties(expert_logits))

    def _weights_from(self, u: torch.Tensor, offset=None) -> torch.Tensor:
        """Rows [B, M] from the experts' uncertainties u [M, B] (``offset``: fitted (b, w))."""
        if self.offset_adjustment:
            offset = offset or self.offset or True
            return two_model_rows(coefficients_from_entropies(u[0], u[1], offset))
        return torch.softmax(-u.double(), dim=0).t().float()

    @torch.no_grad()
    def calibrate(self, batches: Iterable) -> DaWin:
        """Fit the offset statistics and the mixture on a whole calibration set.

        ``batches``: any iterable of batches (a list, a DataLoader), each an image tensor
        [B, C, H, W], an ``(images, labels, ...)`` tuple or list (labels are ignored), or a
        dict holding the images under ``"images"`` (or ``"pixel_values"``, Hugging Face's
        name).

        Under a process group of W > 1 ranks, ``batches`` are this rank's shard (see
        ``dawin_fast.distributed.shard``) and the fit covers every rank's shard in rank
        order: with the shards of ``shard``, the same bits as one process on the whole set.
        """
        with distributed.shared_errors():
            u = [self._uncertainties(self.expert_logits(
                     batch_images(batch, i, "DaWin.calibrate"))).cpu()
                 for i, batch in enumerate(batches)]
        return self._calibrate(u)

    def calibrate_from_logits(self, expert_logits: torch.Tensor | Sequence[torch.Tensor]
                              ) -> DaWin:
        """``calibrate`` from the experts' logits [M, N, C] on the calibration set.

        Or a list of per-batch logits [M, B_b, C]: each batch's uncertainties are then
        computed on their own, as ``calibrate`` does. Under a process group: this rank's
        shard, as in ``calibrate``. (Per-batch logits keep results bit-identical across
        world sizes for any class count; on one tensor, PyTorch's CPU reductions over more
        than 32k classes split rows across threads differently for shards of 1-3 rows.)
        """
        parts = [expert_logits] if isinstance(expert_logits, torch.Tensor) else expert_logits
        with distributed.shared_errors():
            u = [self._uncertainties(z).cpu() for z in parts]
        return self._calibrate(u)

    def _calibrate(self, u: list[torch.Tensor]) -> DaWin:
        """Fit on rank 0 from every rank's uncertainties ([M, B_b] per batch), broadcast."""
        self.offset, self.mixture = None, None
        gathered = self._gather_for_fit([part.t() for part in u], self.num_models,
                                        "DaWin.calibrate")
        self.offset, self.mixture = distributed.run_on_main(self._fit, gathered)
        return self

    def _fit(self, u: torch.Tensor):
        """(offset terms or None, fitted mixture or None) from the uncertainties u [N, M]."""
        if u.shape[0] == 0:
            raise ValueError("DaWin.calibrate: no batches (no calibration samples)")
        u = u.t()
        offset = offset_terms(u[0], u[1]) if self.offset_adjustment else None
        if self.mode != "mixture":
            return offset, None
        weights = self._weights_from(u, offset)
        return offset, self._new_mixture(self.n_clusters).fit(self._mixture_input(weights))

    @torch.no_grad()
    def merge_rows(self, images: torch.Tensor, expert_logits: torch.Tensor | None = None):
        """(rows, labels, per-sample rows, expert logits) for the merged pass over
        ``images``: rows [1, M] (static mode) or [B, M] per sample and labels None, or the
        cluster table [G, M] and labels [B] (mixture mode)."""
        expert = self.expert_logits(images) if expert_logits is None else expert_logits
        rows = self.weights(expert)
        if self._static is not None:
            return self._static.reshape(1, -1), None, rows, expert
        clustered = self._cluster(rows, self.mixture) if self.mode == "mixture" else None
        if clustered is None:
            return rows, None, rows, expert
        labels, table = clustered
        return table, labels, rows, expert

    @torch.no_grad()
    def predict(self, images: torch.Tensor, return_details: bool = False,
                expert_logits: torch.Tensor | None = None) -> torch.Tensor | DaWinOutput:
        """Logits [B, C] of every image under its DaWin interpolation.

        ``expert_logits`` [M, B, C]: the experts' logits if already computed (skips the
        expert pass).
        """
        _check_image_shape(self.model, images, "DaWin.predict")
        device = images.device
        if self._static is not None and not return_details:
            return self.model(images, self._static.to(device))
        table, labels, rows, expert = self.merge_rows(images, expert_logits)
        applied = table.expand(images.shape[0], -1) if labels is None else table[labels]
        logits = self.model(images, table.to(device),
                            cluster_labels=None if labels is None else labels.to(device))
        if not return_details:
            return logits
        return DaWinOutput(logits, rows, applied, labels, expert)

    __call__ = predict


def task_vectors(pretrained: nn.Module, finetuned: Sequence[nn.Module]) -> list[nn.Module]:
    """[θ_pre, τ_1, ..., τ_T] as modules (τ_t = θ_t - θ_pre), for task-arithmetic stacks.

    Floating-point parameters and buffers become differences; others must be equal.
    """
    base = pretrained.state_dict()
    out = [pretrained]
    for t, model in enumerate(finetuned):
        state = model.state_dict()
        if state.keys() != base.keys():
            missing = sorted(base.keys() ^ state.keys())[:3]
            raise ValueError(f"task_vectors: task model {t} has other parameters: {missing}")
        diff = {}
        for name, value in base.items():
            if value.is_floating_point():
                diff[name] = state[name] - value
            elif not torch.equal(state[name], value):
                raise ValueError(f"task_vectors: non-float '{name}' differs in task model {t}")
            else:
                diff[name] = value
        vector = copy.deepcopy(pretrained)
        vector.load_state_dict(diff)
        out.append(vector)
    return out


#: How ``DaWinMultiTask`` scores its T task models θ_pre + τ_t on a sample (both give
#: p = softmax_t(-H_t)):
#:
#: * ``"evaluated_task_head"``: every task model through the head of the task being
#:   evaluated, so that the T entropies are over the same classes (the paper's protocol,
#:   for test sets of a known task);
#: * ``"own_head"``: task model t through task t's head, for inputs of unknown task (the
#:   entropies are then over different class sets, and log C_t alone favours tasks with
#:   few classes).
MULTITASK_PROTOCOLS = ("evaluated_task_head", "own_head")

Head = torch.Tensor | nn.Module


class DaWinMultiTask(_Base):
    """Multi-task DaWin by task arithmetic: θ(x) = θ_pre + s Σ_t p_t(x) τ_t.

    Args:
        encoder: an interpolating encoder over [θ_pre, τ_1, ..., τ_T] (build it from
            ``task_vectors(pretrained, finetuned)``), returning features.
        heads: T task heads, not interpolated: ``nn.Linear`` or [C_t, D] tensors (applied
            to the features, L2-normalised first when ``normalize``), or other modules
            mapping the features to logits (applied as they are, e.g. a projection, the
            normalisation and a zero-shot head). ``predict(images, task=d)`` returns head
            d's logits.
        protocol: how the task models are scored (see ``MULTITASK_PROTOCOLS``). None (default): the
            evaluated task's head wherever the task is given (``predict``,
            ``calibrate(batches, task=d)``), each model's own head where it is not. A
            protocol named here applies everywhere (``"evaluated_task_head"`` then needs
            the task).
        normalize: L2-normalise features before tensor and ``nn.Linear`` heads (CLIP
            zero-shot heads).
        scale: s (default 0.3·T). Other arguments as in ``DaWin``; the mixture is a
            Dirichlet mixture on p, fitted per dataset by ``calibrate(batches, task=d)``
            (or on each batch without calibration); every sample of a cluster gets the
            component mean.
    """

    def __init__(self, encoder: GroupedModel, heads: Sequence[Head],
                 temperatures: Sequence[float] | None = None, mode: str = "mixture",
                 n_clusters: int = 3, scale: float | None = None, normalize: bool = True,
                 expertise: str = "entropy", seed: int = 0, protocol: str | None = None
                 ) -> None:
        heads = list(heads)
        if encoder.num_models != len(heads) + 1:
            raise ValueError(f"DaWinMultiTask: an encoder of {encoder.num_models} stacked "
                             f"models needs {encoder.num_models - 1} heads, got {len(heads)}")
        if not isinstance(mode, str):
            raise ValueError("DaWinMultiTask: mode must be 'mixture' or 'per_sample'")
        if isinstance(temperatures, str):
            raise ValueError(f"DaWinMultiTask: temperatures={temperatures!r} names the "
                             f"authors' (zero-shot, fine-tuned) pair, which is DaWin's; give "
                             f"{len(heads)} numbers, one per task")
        if protocol is not None and protocol not in MULTITASK_PROTOCOLS:
            raise ValueError(f"DaWinMultiTask: protocol must be one of "
                             f"{MULTITASK_PROTOCOLS} or None (the evaluated task's head "
                             f"where the task is given), got {protocol!r}")
        super().__init__(len(heads), temperatures, mode, n_clusters, expertise, seed)
        self.encoder = encoder
        self.heads = [_check_head(h, f"heads[{i}]") for i, h in enumerate(heads)]
        self.normalize = normalize
        self.num_tasks = len(heads)
        self.scale = 0.3 * self.num_tasks if scale is None else float(scale)
        self.protocol = protocol
        #: Mixtures fitted by ``calibrate``, by the task of their dataset (None: unknown).
        self.mixtures: dict[int | None, DirichletMixture] = {}
        self._mixture_on_lambda = False

    def _check_task(self, task) -> None:
        if isinstance(task, bool) or not isinstance(task, (int, np.integer)) \
                or not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be in [0, {self.num_tasks}), got {task!r}")

    def protocol_for(self, task: int | None) -> str:
        """The protocol scoring the task models on inputs of ``task`` (None: unknown)."""
        if task is not None:
            self._check_task(task)
        if self.protocol is None:
            return "own_head" if task is None else "evaluated_task_head"
        if self.protocol == "evaluated_task_head" and task is None:
            raise ValueError("DaWinMultiTask: protocol 'evaluated_task_head' scores every "
                             "task model through the evaluated task's head; give the task "
                             "(task=...)")
        return self.protocol

    def _logits(self, features: torch.Tensor, head: Head) -> torch.Tensor:
        if isinstance(head, nn.Module) and not isinstance(head, nn.Linear):
            return head(features)
        if self.normalize:
            features = F.normalize(features, dim=-1)
        if isinstance(head, nn.Linear):
            return F.linear(features.to(head.weight.dtype), head.weight, head.bias)
        return F.linear(features.to(head.dtype), head)

    def _rows(self, p: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(p.shape[0], 1, dtype=p.dtype, device=p.device)
        return torch.cat([ones, self.scale * p], dim=1)

    @torch.no_grad()
    def expert_features(self, images: torch.Tensor) -> torch.Tensor:
        """[T, B, D]: the features of every task model θ_pre + τ_t, one fused pass."""
        _check_image_shape(self.encoder, images, "DaWinMultiTask")
        batch, tasks = images.shape[0], self.num_tasks
        stacked = images.unsqueeze(0).expand(tasks, *images.shape).reshape(-1, *images.shape[1:])
        rows = torch.zeros(tasks, tasks + 1, device=images.device)
        rows[:, 0] = 1.0
        rows[torch.arange(tasks), torch.arange(tasks) + 1] = 1.0
        labels = torch.arange(tasks, device=images.device).repeat_interleave(batch)
        features = _pooled(self.encoder(stacked, rows, cluster_labels=labels))
        return features.reshape(tasks, batch, features.shape[-1])  # B may be 0

    @torch.no_grad()
    def expert_logits(self, images: torch.Tensor, task: int | None = None,
                      head: Head | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The T task models' logits under ``protocol_for(task)``.

        Evaluated task's head: [T, B, C] with every model through head ``task`` (or through
        ``head``, e.g. the zero-shot head an evaluation builds for that task). Own head: T
        tensors [B, C_t], model t through head t.
        """
        protocol = self.protocol_for(task)
        if head is not None:
            if protocol != "evaluated_task_head":
                raise ValueError("DaWinMultiTask: head is the evaluated task's head, but "
                                 "protocol 'own_head' scores each task model through its "
                                 "own head")
            head = _check_head(head, "head")
        features = self.expert_features(images)
        if protocol == "own_head":
            return [self._logits(features[t], self.heads[t]) for t in range(self.num_tasks)]
        head = self.heads[task] if head is None else head
        return torch.stack([self._logits(features[t], head) for t in range(self.num_tasks)])

    def weights(self, expert_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-sample task weights p [B, T] = softmax over tasks of the negated uncertainty."""
        return torch.softmax(-self._uncertainties(expert_logits).double(), dim=0).t().float()

    def mixture_for(self, task: int | None) -> DirichletMixture | None:
        """The mixture ``calibrate`` fitted for inputs of ``task``, or None (nothing
        calibrated: the mixture is fitted on each batch)."""
        if not self.mixtures or task in self.mixtures:
            return self.mixtures.get(task)
        if self.protocol_for(task) == "own_head" and None in self.mixtures:
            return self.mixtures[None]  # own-head weights do not depend on the task
        known = ", ".join("unknown task" if t is None else f"task {t}" for t in self.mixtures)
        fix = f"calibrate(batches, task={task})" if task is not None else "calibrate(batches)"
        raise ValueError(f"DaWinMultiTask: calibrated for {known}, not for "
                         f"{'an unknown task' if task is None else f'task {task}'}; "
                         f"calibrate on a dataset of it ({fix})")

    @torch.no_grad()
    def merge_rows(self, images: torch.Tensor, task: int | None = None,
                   head: Head | None = None):
        """(rows, labels, p, expert logits) for the merged pass over ``images`` of ``task``
        (None: unknown; ``head`` as in ``expert_logits``): rows [B, T+1] per sample and
        labels None, or the cluster table [G, T+1] and labels [B]."""
        mixture = self.mixture_for(task) if self.mode == "mixture" else None
        expert = self.expert_logits(images, task, head)
        p = self.weights(expert)
        clustered = self._cluster(p, mixture) if self.mode == "mixture" else None
        if clustered is None:
            return self._rows(p), None, p, expert
        labels, table = clustered
        return self._rows(table), labels, p, expert

    @torch.no_grad()
    def calibrate(self, batches: Iterable, task: int | None = None,
                  head: Head | None = None) -> DaWinMultiTask:
        """Fit the Dirichlet mixture on the task weights of a whole dataset of ``task``
        (None: unknown; ``head`` as in ``expert_logits``), for the predictions on that
        task. Batches as in ``DaWin.calibrate``.

        Under a process group: this rank's shard, as in ``DaWin.calibrate``.
        """
        self.protocol_for(task)  # a bad task or protocol fails before any work
        self.mixtures.pop(task, None)
        with distributed.shared_errors():
            p = [self.weights(self.expert_logits(
                     batch_images(b, i, "DaWinMultiTask.calibrate"), task, head)).cpu()
                 for i, b in enumerate(batches)]
        gathered = self._gather_for_fit(p, self.num_tasks, "DaWinMultiTask.calibrate")
        mixture = distributed.run_on_main(self._fit, gathered)
        if mixture is not None:
            self.mixtures[task] = mixture
        return self

    @torch.no_grad()
    def predict(self, images: torch.Tensor, task: int, return_details: bool = False
                ) -> torch.Tensor | DaWinOutput:
        """Logits of task ``task``'s head on the per-sample merged encoder, the task
        models scored under ``protocol_for(task)`` (the evaluated task's head by default)."""
        self._check_task(task)
        _check_image_shape(self.encoder, images, "DaWinMultiTask.predict")
        device = images.device
        rows, labels, p, expert = self.merge_rows(images, task)
        applied = rows if labels is None else rows[labels]
        features = self.encoder(images, rows.to(device),
                                cluster_labels=None if labels is None else labels.to(device))
        logits = self._logits(_pooled(features), self.heads[task])
        if not return_details:
            return logits
        return DaWinOutput(logits, self._rows(p), applied, labels, expert)


def _check_head(head, what: str) -> Head:
    if isinstance(head, torch.Tensor) and head.dim() == 2:
        return head
    if isinstance(head, nn.Module):
        return head
    shape = f" of shape {list(head.shape)}" if isinstance(head, torch.Tensor) else ""
    raise TypeError(f"DaWinMultiTask: {what} must be a [C, D] tensor, an nn.Linear or a "
                    f"module mapping features to logits, got a {type(head).__name__}{shape}")


def _pooled(features):
    return features[0] if isinstance(features, tuple) else features
