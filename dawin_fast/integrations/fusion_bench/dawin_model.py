"""The model ``clip_dawin`` returns: multi-task DaWin as a CLIP vision model.

FusionBench's CLIP task pools put the returned model in place of a CLIP model's vision
tower and classify its pooled output with the evaluated task's zero-shot head. How the
model scores the task models depends on whether it knows that task:

* told by ``DaWinCLIPVisionModelTaskPool`` (``begin_task``): every task model is scored
  through the evaluated task's zero-shot head, the one the task pool classifies with, and
  in mixture mode the mixture is fitted on that task's test set first (the paper's
  protocol, ``"evaluated_task_head"``);
* not told (FusionBench's own task pools): task model t through task t's head
  (``"own_head"``), said once in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...pipeline import DaWin, DaWinMultiTask, batch_images

log = logging.getLogger(__name__)


class ZeroShotHead(nn.Module):
    """CLIP's zero-shot classification of pooled vision features: the visual projection
    (None: the features as they are), L2 normalisation, then ``weight`` [C, D] (the
    normalised class text embeddings, times CLIP's logit scale)."""

    def __init__(self, projection: nn.Module | None, weight: torch.Tensor) -> None:
        super().__init__()
        self.projection = projection
        self.register_buffer("weight", weight.detach().clone())

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        features = pooled if self.projection is None else self.projection(pooled)
        features = F.normalize(features, dim=-1)
        return features.to(self.weight.dtype) @ self.weight.t()


class PooledVision(nn.Module):
    """A CLIP vision model returning (pooled features, projected when ``projection`` is
    given, and its own output)."""

    def __init__(self, vision: nn.Module, projection: nn.Module | None = None) -> None:
        super().__init__()
        self.vision = vision
        self.projection = projection

    def forward(self, pixel_values: torch.Tensor):
        out = self.vision(pixel_values)
        pooled = out[1]
        return (pooled if self.projection is None else self.projection(pooled)), out


class DaWinCLIPVisionModel(nn.Module):
    """Multi-task DaWin as a drop-in CLIP vision model for FusionBench's task pools.

    ``forward(pixel_values)``: T expert passes (one fused forward of θ_pre + τ_t), per-sample
    task weights p = softmax_t(-H_t), then one fused pass of every image through
    θ_pre + s·Σ_t p_t τ_t; returns that pass's ``BaseModelOutputWithPooling`` in the
    caller's order. The experts are scored through the evaluated task's head between
    ``begin_task`` and ``end_task``, through their own heads otherwise.

    With one task (a ``DaWin`` over [θ_pre, θ_1], both through the task's head): the
    two-model DaWin, λ = e^{-H_1} / (e^{-H_0} + e^{-H_1}) per sample (Beta mixture on λ
    in mixture mode), and the pass through (1 - λ) θ_pre + λ θ_1.
    """

    def __init__(self, dawin: DaWinMultiTask | DaWin, task_names: Sequence[str]) -> None:
        super().__init__()
        self.dawin = dawin
        self.task_names = list(task_names)
        self.encoder = dawin.model.encoder if isinstance(dawin, DaWin) else dawin.encoder
        # The heads are modules when they are zero-shot heads: here they move with .to().
        self.heads = nn.ModuleList([h for h in getattr(dawin, "heads", [])
                                    if isinstance(h, nn.Module)])
        self._task: tuple[int, nn.Module] | None = None
        self._said_protocol = False

    @property
    def protocol(self) -> str:
        """How the task models are scored now (``dawin_fast.MULTITASK_PROTOCOLS``)."""
        one_task = isinstance(self.dawin, DaWin)  # one head: the evaluated task's
        return "evaluated_task_head" if self._task is not None or one_task else "own_head"

    @torch.no_grad()
    def begin_task(self, task_name: str, head: nn.Module,
                   calibration: Iterable | None = None) -> None:
        """Score every task model through ``head`` (the zero-shot head the evaluation of
        ``task_name`` classifies with) until ``end_task``; in mixture mode, first fit the
        task's mixture on ``calibration`` (its test batches: images, or (images, labels))."""
        if task_name not in self.task_names:
            raise ValueError(f"clip_dawin: the task pool evaluates task '{task_name}', "
                             f"which has no task model in the merged pool "
                             f"{self.task_names}; the evaluated task's head protocol needs "
                             f"the task's index among the merged tasks")
        index = self.task_names.index(task_name)
        self._task = (index, head)
        if self.dawin.mode != "mixture" or calibration is None:
            return
        if isinstance(self.dawin, DaWin):
            self.dawin.calibrate_from_logits(
                [self._two_model_logits(batch_images(b, i, "clip_dawin"), head)
                 for i, b in enumerate(calibration)])
        else:
            self.dawin.calibrate(calibration, task=index, head=head)

    def end_task(self) -> None:
        """Back to the protocol for an unknown task (each task model's own head)."""
        self._task = None
        if isinstance(self.dawin, DaWinMultiTask):
            self.dawin.mixtures.clear()
        else:
            self.dawin.mixture = None

    def _two_model_logits(self, pixel_values: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """[2, B, C]: θ_pre and θ_1 through ``head``, one fused pass."""
        batch = pixel_values.shape[0]
        stacked = pixel_values.unsqueeze(0).expand(2, *pixel_values.shape)
        labels = torch.arange(2, device=pixel_values.device).repeat_interleave(batch)
        _, out = self.encoder(stacked.reshape(-1, *pixel_values.shape[1:]),
                              torch.eye(2, device=pixel_values.device), cluster_labels=labels)
        return head(out[1]).reshape(2, batch, -1)

    def _merge_rows(self, pixel_values: torch.Tensor):
        if self._task is None:
            if self.protocol == "own_head" and not self._said_protocol:
                log.warning("clip_dawin: the task pool does not say which task it "
                            "evaluates, so each task model is scored through its own "
                            "task's head (protocol 'own_head'), not the paper's (every "
                            "model through the evaluated task's head); "
                            "taskpool=dawin_fast/clip-vit-classification_TA8 (or any "
                            "DaWinCLIPVisionModelTaskPool) gives the paper's protocol")
                self._said_protocol = True
            return self.dawin.merge_rows(pixel_values)[:2]
        index, head = self._task
        if isinstance(self.dawin, DaWin):
            logits = self._two_model_logits(pixel_values, head)
            return self.dawin.merge_rows(pixel_values, expert_logits=logits)[:2]
        return self.dawin.merge_rows(pixel_values, task=index, head=head)[:2]

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor):
        rows, labels = self._merge_rows(pixel_values)
        device = pixel_values.device
        _, out = self.encoder(pixel_values, rows.to(device),
                              cluster_labels=None if labels is None else labels.to(device))
        return out
