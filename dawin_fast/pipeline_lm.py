"""``DaWinLM``: DaWin on causal language models, one interpolation per sequence.

Per batch of prompts:

1. expert pass: the M models over the batch as one fused forward (the batch repeated
   once per expert, each copy under its expert's one-hot row: plain GEMMs per group);
2. expertise per sequence: each expert's mean next-token entropy over the prompt's real
   tokens (positions where ``attention_mask`` is 1; position t's logits predict token
   t+1, the last one the first generated token);
3. coefficient rows p = softmax_i(-H_i) [B, M]; optionally a mixture over them (K clusters,
   every sequence at its cluster's component mean), as in the vision pipeline;
4. ``generate`` (or ``forward``) with sequence b under its row.

Two weight layouts, as in ``dawin_fast.pipeline``:

* convex (default): M fine-tunes interpolated with rows p (Beta mixture on λ for M=2,
  Dirichlet on p for M>2);
* ``task_arithmetic=True``: models stacked as [θ_pre, τ_1, ..., τ_T] (``task_vectors``),
  expert t is θ_pre + τ_t (row [1, e_t]), merged rows [1, s·p_1, ..., s·p_T] with
  s = 0.3·T by default. Language models share the vocabulary head, so no per-task heads.

``mode`` may also be a fixed row (or λ for two models): static interpolation, no expert pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from . import distributed
from .nn.hf_lm import DaWinCausalLM
from .pipeline import _Base, uncertainty


@dataclasses.dataclass
class DaWinLMOutput:
    """What ``DaWinLM.generate(..., return_details=True)`` returns (caller's order)."""

    output: Any  #: what the model's ``generate`` returned
    weights: torch.Tensor  #: [B, E] per-sequence expert weights p (E experts)
    applied: torch.Tensor  #: [B, M] rows the sequences were generated with
    labels: torch.Tensor | None  #: [B] cluster of each sequence (mixture mode), else None
    uncertainties: torch.Tensor  #: [E, B] each expert's mean next-token uncertainty


def prompt_batch(batch: Any, index: int, fn: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input_ids, attention_mask) of a calibration batch: a tensor of ids, a tuple/list
    ``(input_ids, attention_mask, ...)``, or a dict (a tokenizer's ``BatchEncoding``)."""
    ids, mask = batch, None
    if isinstance(batch, (tuple, list)) and batch:
        ids, mask = batch[0], (batch[1] if len(batch) > 1 else None)
    elif isinstance(batch, dict) or hasattr(batch, "keys"):
        ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise TypeError(f"{fn}: batch {index} holds no input_ids [B, L]; expected a tensor, "
                        f"an (input_ids, attention_mask) pair, or a dict with 'input_ids'")
    return ids, mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last dim of ``values`` [..., B, L] where ``mask`` [B, L] is 1."""
    if mask is None:
        return values.mean(-1)
    weights = mask.to(values.dtype)
    counts = weights.sum(-1)
    if bool((counts == 0).any()):
        raise ValueError("attention_mask: a sequence has no real token")
    return (values * weights).sum(-1) / counts


class DaWinLM(_Base):
    """DaWin on a ``DaWinCausalLM`` (what ``dawinize`` returns for causal LMs).

    Args:
        model: ``dawinize([lm_0, ..., lm_{M-1}])`` (or of ``task_vectors(base, tuned)``).
        temperatures: one softmax temperature per expert (default 1.0 each).
        mode: ``"mixture"`` (K clusters at their component means), ``"per_sample"`` (every
            sequence its own row), a float λ (two models) or a fixed row [M] (static).
        n_clusters: K of the mixture (a batch of at most K sequences runs per-sample).
        expertise: ``"entropy"`` (the paper's), ``"max_logit"`` or ``"max_softmax"``,
            averaged over the prompt's real tokens.
        task_arithmetic: the model stacks [θ_pre, τ_1, ..., τ_T] (see the module docstring).
        scale: s of task arithmetic (default 0.3·T).
        seed: seed of the mixture's k-means initialisation.
    """

    _calibration_items = "prompts"

    def __init__(self, model: DaWinCausalLM, temperatures: Sequence[float] | None = None,
                 mode: str | float | Sequence[float] = "mixture", n_clusters: int = 3,
                 expertise: str = "entropy", task_arithmetic: bool = False,
                 scale: float | None = None, seed: int = 0) -> None:
        if not isinstance(model, DaWinCausalLM):
            raise TypeError("DaWinLM: model must be a DaWinCausalLM (dawinize of Hugging Face "
                            "causal LMs)")
        experts = model.num_models - 1 if task_arithmetic else model.num_models
        if experts < 2:
            raise ValueError(f"DaWinLM: {model.num_models} stacked models are too few: "
                             f"{'a base and two task vectors' if task_arithmetic else 'two'} "
                             f"at least")
        super().__init__(experts, temperatures, mode, n_clusters, expertise, seed)
        self.model = model
        self.mixture = None  # fitted by calibrate()
        self.num_models = model.num_models
        self.num_experts = experts
        self.task_arithmetic = task_arithmetic
        self.scale = 0.3 * experts if scale is None else float(scale)
        self._mixture_on_lambda = experts == 2 and not task_arithmetic
        self._static = None if isinstance(mode, str) else self._static_row(mode)

    def _static_row(self, mode) -> torch.Tensor:
        row = torch.as_tensor(mode, dtype=torch.float32).reshape(-1)
        if row.numel() == 1 and self.num_models == 2 and not self.task_arithmetic:
            row = torch.cat([1 - row, row])
        if row.numel() != self.num_models or not bool(torch.isfinite(row).all()):
            raise ValueError(f"DaWinLM: a fixed mode needs {self.num_models} finite "
                             f"coefficients (or λ for two models), got {mode!r}")
        return row

    def expert_rows(self) -> torch.Tensor:
        """[E, M]: the row of each expert (one-hot; [1, e_t] under task arithmetic)."""
        if not self.task_arithmetic:
            return torch.eye(self.num_models)
        rows = torch.zeros(self.num_experts, self.num_models)
        rows[:, 0] = 1.0
        rows[torch.arange(self.num_experts), torch.arange(self.num_experts) + 1] = 1.0
        return rows

    @torch.no_grad()
    def expert_logits(self, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[E, B, L, V]: every expert's logits over the prompts, from one fused forward."""
        experts, batch = self.num_experts, input_ids.shape[0]
        rows = self.expert_rows().to(input_ids.device).repeat_interleave(batch, dim=0)
        mask = None if attention_mask is None else attention_mask.repeat(experts, 1)
        out = self.model(input_ids.repeat(experts, 1), rows, attention_mask=mask)
        return out.logits.reshape(experts, batch, *out.logits.shape[1:])

    def uncertainties(self, expert_logits: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[E, B]: each expert's mean per-token uncertainty over the real prompt tokens."""
        return torch.stack([
            masked_mean(uncertainty(z.float(), self.expertise, t), attention_mask)
            for z, t in zip(expert_logits, self.temperatures, strict=True)])

    def weights(self, u: torch.Tensor) -> torch.Tensor:
        """Per-sequence expert weights p [B, E] = softmax over experts of -u."""
        return torch.softmax(-u.double(), dim=0).t().float()

    def _merge_rows(self, p: torch.Tensor) -> torch.Tensor:
        if not self.task_arithmetic:
            return p
        return torch.cat([torch.ones(p.shape[0], 1, dtype=p.dtype), self.scale * p], dim=1)

    @torch.no_grad()
    def rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(applied rows [B, M], weights p [B, E], labels [B] or None, uncertainties [E, B])."""
        if self._static is not None:
            raise ValueError("DaWinLM.rows: a fixed mode has no per-sequence rows")
        u = self.uncertainties(self.expert_logits(input_ids, attention_mask),
                               attention_mask).cpu()
        p = self.weights(u)
        clustered = self._cluster(p, self.mixture) if self.mode == "mixture" else None
        if clustered is None:
            return self._merge_rows(p), p, None, u
        labels, table = clustered
        return self._merge_rows(table)[labels], p, labels, u

    @torch.no_grad()
    def calibrate(self, batches: Iterable) -> DaWinLM:
        """Fit the mixture on the expert weights of a whole calibration set (batches of
        prompts: id tensors, ``(input_ids, attention_mask)`` pairs or tokenizer dicts).

        Under a process group: this rank's shard, as in ``DaWin.calibrate``.
        """
        self.mixture = None
        with distributed.shared_errors():
            p = []
            for i, batch in enumerate(batches):
                ids, mask = prompt_batch(batch, i, "DaWinLM.calibrate")
                p.append(self.weights(self.uncertainties(self.expert_logits(ids, mask),
                                                         mask)).cpu())
        gathered = self._gather_for_fit(p, self.num_experts, "DaWinLM.calibrate")
        self.mixture = distributed.run_on_main(self._fit, gathered)
        return self

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 return_details: bool = False, **generate_kwargs: Any) -> Any:
        """The model's ``generate``, every prompt under its DaWin row (``generate_kwargs``
        as for the model: ``max_new_tokens``, ``num_beams``, ``do_sample``, ...)."""
        if self._static is not None:
            out = self.model.generate(input_ids, attention_mask=attention_mask,
                                      coeffs=self._static.to(input_ids.device),
                                      **generate_kwargs)
            if not return_details:
                return out
            batch = input_ids.shape[0]
            return DaWinLMOutput(out, torch.full((batch, self.num_experts), float("nan")),
                                 self._static.expand(batch, -1), None,
                                 torch.full((self.num_experts, batch), float("nan")))
        applied, p, labels, u = self.rows(input_ids, attention_mask)
        out = self.model.generate(input_ids, attention_mask=attention_mask,
                                  coeffs=applied.to(input_ids.device), **generate_kwargs)
        return DaWinLMOutput(out, p, applied, labels, u) if return_details else out

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        """The model's forward output (logits [B, L, V], ...) under each prompt's row."""
        coeffs = self._static if self._static is not None else \
            self.rows(input_ids, attention_mask)[0]
        return self.model(input_ids, coeffs.to(input_ids.device),
                          attention_mask=attention_mask, **kwargs)

    __call__ = forward


__all__ = ["DaWinLM", "DaWinLMOutput", "masked_mean", "prompt_batch"]
