"""Per-sample expertise of a model: how sure it is of its prediction.

DaWin weighs each model by its prediction entropy H(x) = -sum_c p_c log p_c with
p = softmax(z / T) (lower entropy = more expert). The paper's ablation also tries the
cross-entropy against (pseudo-)labels, the max logit and the max softmax probability;
they are here too. Entropy and cross-entropy are uncertainties (lower = more expert);
max logit and max softmax are confidences (higher = more expert), so negate them before
passing them where an entropy is expected (e.g. ``coefficients_from_entropies``).

Everything is computed in float32 (float64 if the logits are float64) from
``log_softmax``, so it neither overflows nor takes ``log(0)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["cross_entropy", "entropy", "max_logit", "max_softmax"]


def _check_logits(logits: torch.Tensor, fn: str) -> torch.Tensor:
    """Validate ``logits`` [..., C] and return them in the compute dtype."""
    if isinstance(logits, np.ndarray):
        logits = torch.from_numpy(logits)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{fn}: logits must be a torch tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"{fn}: logits must be floating point, got {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"{fn}: logits must be [..., C] with at least one class, got {tuple(logits.shape)}"
        )
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{fn}: logits contain NaN or infinity")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.to(dtype)


def _check_temperature(temperature: float, fn: str) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: temperature must be a number, got {temperature!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"{fn}: temperature must be finite and > 0, got {temperature!r}")
    return t


def _log_probs(z: torch.Tensor, temperature: float) -> torch.Tensor:
    # Shift by the max before dividing by T: the max entry becomes exactly 0, so a small T
    # cannot overflow it to inf (others may reach -inf, which log_softmax handles).
    z = z - z.amax(dim=-1, keepdim=True)
    return torch.log_softmax(z / temperature, dim=-1)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Prediction entropy of softmax(logits / temperature).

    Parameters
    ----------
    logits : Tensor [..., C]
        Floating-point, finite logits.
    temperature : float
        Softmax temperature, > 0.

    Returns
    -------
    Tensor [...]
        Entropy in nats, in [0, log C]; float32 (float64 for float64 logits).
    """
    z = _check_logits(logits, "entropy")
    t = _check_temperature(temperature, "entropy")
    logp = _log_probs(z, t)
    p = logp.exp()
    # p == 0 exactly (log p = -inf) contributes 0, not 0 * -inf = NaN.
    terms = torch.where(p > 0, p * logp, torch.zeros_like(p))
    return -terms.sum(dim=-1)


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-sample cross-entropy -log softmax(logits / temperature)[label].

    Parameters
    ----------
    logits : Tensor [..., C]
        Floating-point, finite logits.
    labels : Tensor [...], integer
        True labels (oracle analysis) or pseudo-labels, e.g. the argmax of another model
        or of the average of both models' probabilities, in [0, C).
    temperature : float
        Softmax temperature, > 0.

    Returns
    -------
    Tensor [...]
        Cross-entropy in nats (>= 0; +inf only if the label's probability underflows);
        float32 (float64 for float64 logits).
    """
    z = _check_logits(logits, "cross_entropy")
    t = _check_temperature(temperature, "cross_entropy")
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise ValueError("cross_entropy: labels must be an integer tensor")
    if labels.dtype == torch.bool:
        raise ValueError("cross_entropy: labels must be an integer tensor, got bool")
    if labels.shape != z.shape[:-1]:
        raise ValueError(
            f"cross_entropy: labels must have shape {tuple(z.shape[:-1])} (logits without the "
            f"class dimension), got {tuple(labels.shape)}"
        )
    if labels.device != z.device:
        raise ValueError(f"cross_entropy: labels on {labels.device}, logits on {z.device}")
    num_classes = z.shape[-1]
    if labels.numel() and not bool(((labels >= 0) & (labels < num_classes)).all()):
        raise ValueError(f"cross_entropy: labels must be in [0, {num_classes})")
    logp = _log_probs(z, t)
    return -logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit per sample (a confidence: higher = more expert).

    Parameters
    ----------
    logits : Tensor [..., C]

    Returns
    -------
    Tensor [...]
        float32 (float64 for float64 logits).
    """
    z = _check_logits(logits, "max_logit")
    return z.amax(dim=-1)


def max_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Largest softmax probability per sample (a confidence: higher = more expert).

    Parameters
    ----------
    logits : Tensor [..., C]
    temperature : float
        Softmax temperature, > 0.

    Returns
    -------
    Tensor [...]
        In [1/C, 1]; float32 (float64 for float64 logits).
    """
    z = _check_logits(logits, "max_softmax")
    t = _check_temperature(temperature, "max_softmax")
    return _log_probs(z, t).amax(dim=-1).exp()
