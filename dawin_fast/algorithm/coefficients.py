"""DaWin's per-sample interpolation coefficients, and the paper's output-space variants.

Two models (zero-shot θ_0, fine-tuned θ_1): the weight on θ_1 is

    λ(x) = e^{-H_1} / (e^{-H_0} + e^{-H_1}) = sigmoid(H_0 - H_1),

with H_i the entropy of model i's tempered prediction. Optional offset adjustment, from
statistics of H over an evaluation set (unbiased std):

    b = (std(H_0)/mean(H_0) + std(H_1)/mean(H_1)) / 2,   w = (mean(H_0) + mean(H_1)) / mean(H_0),
    λ = (e^{-H_1} + b/w) / (e^{-H_0} + e^{-H_1} + b).

Many models (multi-task merging, weights stacked as [θ_pre, τ_1, ..., τ_T]): p = softmax over
tasks of -H_t and coefficient rows [1, s·p_1, ..., s·p_T] with s = 0.3·T by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .expertise import _check_logits, _check_temperature, _log_probs, entropy

__all__ = [
    "TEMPERATURES",
    "coefficients_from_entropies",
    "coefficients_multi",
    "coefficients_two",
    "dynamic_classifier_selection",
    "dynamic_output_ensemble",
    "offset_terms",
]

#: The authors' CLIP temperatures (T_zero_shot, T_fine_tuned), by open_clip model name.
TEMPERATURES: dict[str, tuple[float, float]] = {
    "ViT-B-32": (0.9576, 0.9733),
    "ViT-B-16": (0.96, 1.0066),
    "ViT-L-14": (1.0767, 0.9545),
}


def _two_temperatures(
    temperatures: tuple[float, float] | Sequence[float] | str, fn: str
) -> tuple[float, float]:
    if isinstance(temperatures, str):
        if temperatures not in TEMPERATURES:
            raise ValueError(
                f"{fn}: unknown model {temperatures!r} for temperatures; known: "
                f"{sorted(TEMPERATURES)}"
            )
        temperatures = TEMPERATURES[temperatures]
    if len(temperatures) != 2:
        raise ValueError(f"{fn}: temperatures must be a pair (T_0, T_1), got {temperatures!r}")
    return _check_temperature(temperatures[0], fn), _check_temperature(temperatures[1], fn)


def _check_pair(logits_0: torch.Tensor, logits_1: torch.Tensor, fn: str, same_classes: bool):
    z0 = _check_logits(logits_0, fn)
    z1 = _check_logits(logits_1, fn)
    if z0.dim() != 2 or z1.dim() != 2:
        raise ValueError(
            f"{fn}: logits must be [B, C], got {tuple(z0.shape)} and {tuple(z1.shape)}"
        )
    if z0.shape[0] != z1.shape[0] or (same_classes and z0.shape[1] != z1.shape[1]):
        raise ValueError(
            f"{fn}: logits of both models must have the same "
            f"{'shape' if same_classes else 'batch size'}, "
            f"got {tuple(z0.shape)} and {tuple(z1.shape)}"
        )
    if z0.device != z1.device:
        raise ValueError(f"{fn}: logits on different devices ({z0.device}, {z1.device})")
    dtype = torch.promote_types(z0.dtype, z1.dtype)
    return z0.to(dtype), z1.to(dtype)


def _check_scores(h: torch.Tensor, name: str, fn: str) -> torch.Tensor:
    if not isinstance(h, torch.Tensor):
        h = torch.as_tensor(h)
    if not h.is_floating_point() or h.dim() != 1:
        raise ValueError(f"{fn}: {name} must be a 1-D floating-point tensor [B]")
    if not bool(torch.isfinite(h).all()):
        raise ValueError(f"{fn}: {name} contains NaN or infinity")
    return h.double()


def offset_terms(h0: torch.Tensor, h1: torch.Tensor) -> tuple[float, float]:
    """Offset-adjustment terms (b, w) from the entropies of an evaluation set.

    b = (std(H_0)/mean(H_0) + std(H_1)/mean(H_1)) / 2 and w = (mean(H_0) + mean(H_1)) /
    mean(H_0), with the unbiased std (N - 1). A model whose entropies are all 0 has a
    coefficient of variation of 0 by convention (the limit for H -> 0), and b/w is taken as
    0 when mean(H_0) = 0 (w -> inf).

    Parameters
    ----------
    h0, h1 : Tensor [N]
        Non-negative entropies (or cross-entropies) of the two models on the same N >= 2
        samples.

    Returns
    -------
    (b, w) : tuple of float
        ``w`` is ``inf`` when mean(H_0) = 0.
    """
    h0 = _check_scores(h0, "h0", "offset_terms")
    h1 = _check_scores(h1, "h1", "offset_terms")
    if h0.shape != h1.shape:
        raise ValueError(f"offset_terms: h0 {tuple(h0.shape)} and h1 {tuple(h1.shape)} differ")
    if h0.numel() < 2:
        raise ValueError(
            "offset_terms: the unbiased std needs at least 2 samples; compute (b, w) over the "
            "whole evaluation set and pass them as offset_adjustment=(b, w)"
        )
    if bool((h0 < 0).any()) or bool((h1 < 0).any()):
        raise ValueError("offset_terms: offset adjustment needs non-negative entropies")
    # NumPy reduces in one thread (pairwise sums): the same bits for any thread count.
    # torch's CPU mean splits long reductions across threads (50k float32 entropies gave
    # other last bits with 1 and 2 threads), and torchrun gives each rank one thread.
    a0, a1 = h0.cpu().numpy(), h1.cpu().numpy()
    m0, m1 = float(a0.mean()), float(a1.mean())
    s0, s1 = float(a0.std(ddof=1)), float(a1.std(ddof=1))
    cv0 = s0 / m0 if m0 > 0 else 0.0
    cv1 = s1 / m1 if m1 > 0 else 0.0
    b = (cv0 + cv1) / 2
    w = (m0 + m1) / m0 if m0 > 0 else math.inf
    return b, w


def coefficients_from_entropies(
    h0: torch.Tensor,
    h1: torch.Tensor,
    offset_adjustment: bool | tuple[float, float] = False,
) -> torch.Tensor:
    """λ (weight on model 1) from precomputed per-sample uncertainties.

    Parameters
    ----------
    h0, h1 : Tensor [B]
        Uncertainty of model 0 and model 1 per sample, lower = more expert: entropies,
        cross-entropies, or negated confidences (``-max_logit``, ``-max_softmax``).
    offset_adjustment : bool or (b, w)
        False: λ = sigmoid(h0 - h1). True: offset adjustment with (b, w) from
        ``offset_terms(h0, h1)``, i.e. from the statistics of the samples passed (pass a
        whole evaluation set). A pair (b, w): offset adjustment with these terms (computed
        once over an evaluation set, then applied batch by batch).

    Returns
    -------
    Tensor [B] float32
        λ in [0, 1], on the device of ``h0``.
    """
    fn = "coefficients_from_entropies"
    h0 = _check_scores(h0, "h0", fn)
    h1 = _check_scores(h1, "h1", fn)
    if h0.shape != h1.shape or h0.device != h1.device:
        raise ValueError(
            f"{fn}: h0 {tuple(h0.shape)} on {h0.device} and h1 {tuple(h1.shape)} on "
            f"{h1.device} must match"
        )
    if isinstance(offset_adjustment, bool) and not offset_adjustment:
        # e^{-h1} / (e^{-h0} + e^{-h1}) without exp overflow for any finite h.
        return torch.sigmoid(h0 - h1).float()
    if isinstance(offset_adjustment, bool):
        b, w = offset_terms(h0, h1)
    else:
        try:
            b, w = (float(v) for v in offset_adjustment)
        except (TypeError, ValueError):
            raise ValueError(
                f"{fn}: offset_adjustment must be a bool or a pair (b, w), "
                f"got {offset_adjustment!r}"
            ) from None
        if not (math.isfinite(b) and b >= 0 and w > 0):
            raise ValueError(f"{fn}: offset terms need finite b >= 0 and w > 0, got {(b, w)}")
    # In log space: b/w and b can be 0 (log = -inf) and -h may be large for confidences.
    log_b = math.log(b) if b > 0 else -math.inf
    log_bw = log_b - math.log(w) if (b > 0 and math.isfinite(w)) else -math.inf
    num = torch.logaddexp(-h1, torch.full_like(h1, log_bw))
    den = torch.logsumexp(torch.stack([-h0, -h1, torch.full_like(h0, log_b)]), dim=0)
    return torch.exp(num - den).float()


def coefficients_two(
    logits_0: torch.Tensor,
    logits_1: torch.Tensor,
    temperatures: tuple[float, float] | str = (1.0, 1.0),
    offset_adjustment: bool | tuple[float, float] = False,
) -> torch.Tensor:
    """DaWin's per-sample weight λ on model 1 (e.g. fine-tuned) against model 0 (zero-shot).

    Parameters
    ----------
    logits_0, logits_1 : Tensor [B, C]
        Logits of both models on the same samples (class counts may differ).
    temperatures : (T_0, T_1) or str
        Softmax temperatures, or an open_clip model name in ``TEMPERATURES``.
    offset_adjustment : bool or (b, w)
        As in ``coefficients_from_entropies``; True takes the statistics of this batch.

    Returns
    -------
    Tensor [B] float32
        λ = e^{-H_1} / (e^{-H_0} + e^{-H_1}); merged weights (1 - λ) θ_0 + λ θ_1.
    """
    fn = "coefficients_two"
    t0, t1 = _two_temperatures(temperatures, fn)
    z0, z1 = _check_pair(logits_0, logits_1, fn, same_classes=False)
    return coefficients_from_entropies(entropy(z0, t0), entropy(z1, t1), offset_adjustment)


def coefficients_multi(
    logits: Sequence[torch.Tensor],
    temperatures: Sequence[float] | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-task DaWin: per-sample task weights and task-arithmetic coefficient rows.

    Parameters
    ----------
    logits : sequence of T tensors [B, C_t]
        Each task-specific model's logits on the same B samples (C_t may differ).
    temperatures : sequence of T floats, optional
        Per-model softmax temperatures (default 1.0).
    scale : float, optional
        s in θ = θ_pre + s Σ_t p_t τ_t; default 0.3·T.

    Returns
    -------
    p : Tensor [B, T] float32
        softmax over tasks of -H_t (rows sum to 1).
    coeff_rows : Tensor [B, T+1] float32
        [1, s·p_1, ..., s·p_T], for weights stacked as [θ_pre, τ_1, ..., τ_T].
    """
    fn = "coefficients_multi"
    if isinstance(logits, torch.Tensor) or len(logits) < 1:
        raise ValueError(f"{fn}: logits must be a non-empty sequence of [B, C_t] tensors")
    num_tasks = len(logits)
    if temperatures is None:
        temperatures = [1.0] * num_tasks
    if len(temperatures) != num_tasks:
        raise ValueError(f"{fn}: {len(temperatures)} temperatures for {num_tasks} models")
    s = 0.3 * num_tasks if scale is None else float(scale)
    if not math.isfinite(s):
        raise ValueError(f"{fn}: scale must be finite, got {scale!r}")
    zs = [_check_logits(z, fn) for z in logits]
    for z in zs:
        if z.dim() != 2 or z.shape[0] != zs[0].shape[0] or z.device != zs[0].device:
            raise ValueError(
                f"{fn}: every logits tensor must be [B, C_t] with the same B on the same "
                f"device, got {[tuple(z.shape) for z in zs]}"
            )
    temps = [_check_temperature(t, fn) for t in temperatures]
    h = torch.stack([entropy(z, t) for z, t in zip(zs, temps, strict=True)], dim=1)
    p = torch.softmax(-h.double(), dim=1).float()
    ones = torch.ones(p.shape[0], 1, dtype=p.dtype, device=p.device)
    return p, torch.cat([ones, s * p], dim=1)


def dynamic_output_ensemble(
    logits_0: torch.Tensor,
    logits_1: torch.Tensor,
    lam: torch.Tensor | float,
    temperatures: tuple[float, float] | str = (1.0, 1.0),
) -> torch.Tensor:
    """Output-space DaWin: p = (1 - λ) softmax(z_0 / T_0) + λ softmax(z_1 / T_1).

    Parameters
    ----------
    logits_0, logits_1 : Tensor [B, C]
    lam : Tensor [B] or float
        Weight on model 1 per sample (e.g. from ``coefficients_two``).
    temperatures : (T_0, T_1) or str

    Returns
    -------
    Tensor [B, C]
        Probabilities (rows sum to 1 for λ in [0, 1]); float32 (float64 for float64 logits).
    """
    fn = "dynamic_output_ensemble"
    t0, t1 = _two_temperatures(temperatures, fn)
    z0, z1 = _check_pair(logits_0, logits_1, fn, same_classes=True)
    lam = torch.as_tensor(lam, dtype=z0.dtype, device=z0.device)
    if lam.dim() == 0:
        lam = lam.expand(z0.shape[0])
    if lam.shape != (z0.shape[0],):
        raise ValueError(f"{fn}: lam must be a scalar or [{z0.shape[0]}], got {tuple(lam.shape)}")
    if not bool(torch.isfinite(lam).all()):
        raise ValueError(f"{fn}: lam contains NaN or infinity")
    p0 = _log_probs(z0, t0).exp()
    p1 = _log_probs(z1, t1).exp()
    lam = lam.unsqueeze(1)
    return (1 - lam) * p0 + lam * p1


def dynamic_classifier_selection(
    logits_0: torch.Tensor,
    logits_1: torch.Tensor,
    temperatures: tuple[float, float] | str = (1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, use the model with the lower entropy (ties go to model 0).

    Parameters
    ----------
    logits_0, logits_1 : Tensor [B, C]
    temperatures : (T_0, T_1) or str
        Temperatures for the entropies only.

    Returns
    -------
    model : Tensor [B] int64
        0 or 1, the model chosen for each sample.
    logits : Tensor [B, C]
        The chosen model's raw (untempered) logits, float32 (float64 for float64 logits);
        predictions are ``logits.argmax(-1)``.
    """
    fn = "dynamic_classifier_selection"
    t0, t1 = _two_temperatures(temperatures, fn)
    z0, z1 = _check_pair(logits_0, logits_1, fn, same_classes=True)
    use_1 = entropy(z1, t1) < entropy(z0, t0)
    return use_1.long(), torch.where(use_1.unsqueeze(1), z1, z0)
