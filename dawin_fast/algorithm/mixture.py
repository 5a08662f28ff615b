"""Beta and Dirichlet mixtures for DaWin's O(K) trick.

Fit a mixture on the per-sample coefficients (λ for two models, the task weights p for
many), then give every sample of component k the *component mean*: K merged models
instead of one per sample. Both models run EM in float64 numpy/scipy, initialised from a
seeded k-means (k-means++ seeding, Lloyd iterations) and restarted ``n_init`` times,
keeping the run with the best mean log-likelihood. Inputs may be numpy arrays or torch
tensors; results are numpy arrays.

Shared conventions
------------------
- Sums over the N samples use ``np.einsum`` (one thread, no BLAS), never ``@``: OpenBLAS
  splits long dot products across threads (``r[k] @ X`` at N = 300k gave other last bits
  with 1 and 2 threads), and a fit must give the same bits whatever the thread count
  (torchrun runs each rank with one; ``dawin_fast.distributed`` relies on it).
- Values are clipped into [eps, 1 - eps] (Beta) or [eps, 1] then renormalised to sum to 1
  (Dirichlet) before taking logs, so exact 0s and 1s are fine. NaN/inf, values outside
  [0, 1] and (Dirichlet) rows not summing to 1 raise ``ValueError``.
- Fewer samples than components raises ``ValueError``: the mixture is not identifiable,
  and the caller is better served by per-sample coefficients (K = N is exact DaWin).
- A component whose responsibility mass drops below ``_EMPTY_MASS`` (a millionth of a
  sample) is dropped for the rest of that run: weight exactly 0, parameters frozen at
  their last finite values (or, if k-means left it empty, the moment fit of all the data).
  This is how data with fewer distinct values than components ends up (e.g. all values
  equal: one live component, the others at weight 0 with the same mean).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from scipy.special import betaln, digamma, gammaln, polygamma

__all__ = ["BetaMixture", "DirichletMixture", "kmeans"]

_TINY_VAR = 1e-12  # keeps the method-of-moments variance positive (docs/design.md)
_EMPTY_MASS = 1e-6  # responsibility mass (in samples) below which a component is dropped
# Dirichlet precision cap: gammaln(1e8) ~ 1.7e9 keeps the log-pdf's rounding (~1e-6)
# below tol; only reached by degenerate components (all their samples equal).
_MAX_CONCENTRATION = 1e8
_EULER = 0.5772156649015329

_M = TypeVar("_M", bound="_Mixture")


def _as_float64(x: np.ndarray | torch.Tensor, cls: str) -> np.ndarray:
    """A float64 numpy copy of ``x``; ValueError for non-numeric input."""
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{cls}: input must be real numbers, got {x.dtype}")
        return x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{cls}: input must be real numbers, got dtype {x.dtype}")
    return x.astype(np.float64)


def _logsumexp_components(a: np.ndarray) -> np.ndarray:
    """log Σ_k exp(a[k, n]) over a [K, N] with a finite entry per column."""
    peak = a.max(axis=0)
    return peak + np.log(np.exp(a - peak).sum(axis=0))


def _sq_dists(x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distances [K, N] from centers [K, D] to x [N, D] with row norms x_sq [N]."""
    d = (-2.0 * centers) @ x.T
    d += x_sq[None, :]
    d += (centers * centers).sum(axis=1)[:, None]
    return np.maximum(d, 0.0, out=d)


def kmeans(
    x: np.ndarray,
    n_clusters: int,
    rng: np.random.Generator,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding, deterministic for a given ``rng`` state.

    Parameters
    ----------
    x : ndarray [N, D]
    n_clusters : int
    rng : numpy Generator
    max_iter : int
        Lloyd iterations at most.
    tol : float
        Stop when no label changes or the centers move (sum of squared shifts) by less
        than ``tol`` times the mean per-feature variance of x (scikit-learn's rule).

    Returns
    -------
    labels : ndarray [N] int64
        Nearest center of each point (ties: lowest index).
    centers : ndarray [K, D]
        A cluster that empties is re-seeded at the point farthest from its center; it
        stays empty only when every point coincides with a center (fewer distinct points
        than clusters).
    """
    n = x.shape[0]
    x_sq = np.einsum("nd,nd->n", x, x)
    centers = np.empty((n_clusters, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    d2 = _sq_dists(x, x_sq, centers[:1])[0]
    for j in range(1, n_clusters):
        cum = np.cumsum(d2)
        if cum[-1] > 0:
            idx = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), n - 1)
        else:  # every point sits on a center already
            idx = int(rng.integers(n))
        centers[j] = x[idx]
        d2 = np.minimum(d2, _sq_dists(x, x_sq, centers[j : j + 1])[0])

    shift_tol = tol * float(x.var(axis=0).mean())
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(max_iter):
        d = _sq_dists(x, x_sq, centers)
        new_labels = d.argmin(axis=0)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        old = centers.copy()
        counts = np.bincount(labels, minlength=n_clusters)
        full = counts > 0
        for j in range(x.shape[1]):
            sums = np.bincount(labels, weights=x[:, j], minlength=n_clusters)
            centers[full, j] = sums[full] / counts[full]
        own = d[labels, np.arange(n)]
        for k in np.flatnonzero(~full):
            far = int(own.argmax())
            if own[far] <= 0:
                break
            centers[k] = x[far]
            own[far] = 0.0
        if full.all() and ((centers - old) ** 2).sum() <= shift_tol:
            labels = _sq_dists(x, x_sq, centers).argmin(axis=0)
            break
    return labels, centers


class _Mixture:
    """EM driver shared by the Beta and Dirichlet mixtures."""

    _name = "_Mixture"

    def __init__(
        self,
        n_components: int = 3,
        n_init: int = 3,
        max_iter: int = 1000,
        tol: float = 1e-4,
        seed: int | None = 0,
        eps: float = 1e-6,
    ) -> None:
        for name, value in (
            ("n_components", n_components),
            ("n_init", n_init),
            ("max_iter", max_iter),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{self._name}: {name} must be an integer >= 1, got {value!r}")
        if not (tol >= 0):
            raise ValueError(f"{self._name}: tol must be >= 0, got {tol!r}")
        # eps >> _TINY_VAR keeps the method-of-moments concentration positive.
        if not (1e-10 <= eps < 0.5):
            raise ValueError(f"{self._name}: eps must be in [1e-10, 0.5), got {eps!r}")
        self.n_components = int(n_components)
        self.n_init = int(n_init)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.seed = seed
        self.eps = float(eps)

    # Subclasses: _prepare(x) -> data, _features(data) -> [N, D] for k-means,
    # _log_pdf(data, params) -> [K, N], _m_step(data, resp, mass, params, alive) -> params
    # (params None: first M-step), _finish(params, weights) sets the fitted attributes,
    # _get_params() returns them as params. Per-sample arrays are component-major [K, N]:
    # reductions over K then run along contiguous memory (a row-wise max over K = 3 columns
    # of [N, K] took 1.6 ms at N = 50 000, over [K, N] 0.03 ms).

    def fit(self: _M, x: np.ndarray | torch.Tensor) -> _M:
        """Fit by EM from ``n_init`` k-means initialisations; returns self."""
        for name in ("weights_", "alphas_", "betas_", "means_"):  # a refit starts afresh
            self.__dict__.pop(name, None)
        data = self._prepare(x)
        n = data[0].shape[0]
        if n < self.n_components:
            raise ValueError(
                f"{self._name}: {n} samples for {self.n_components} components; need at least "
                "as many samples as components (use per-sample coefficients instead)"
            )
        rng = np.random.default_rng(self.seed)
        best = None
        for _ in range(self.n_init):
            labels, _ = kmeans(self._features(data), self.n_components, rng)
            run = self._em(data, labels)
            if best is None or run[2] > best[2]:
                best = run
        params, weights, lower_bound, n_iter, converged = best
        self._finish(params, weights)
        self.lower_bound_ = float(lower_bound)
        self.n_iter_ = n_iter
        self.converged_ = converged
        return self

    def _em(self, data, labels):
        k = self.n_components
        resp = np.zeros((k, labels.shape[0]))
        resp[labels, np.arange(labels.shape[0])] = 1.0
        alive = np.ones(k, dtype=bool)
        params, weights, alive = self._m_step_all(data, resp, None, alive)
        resp, ll = self._e_step(data, params, weights)
        n_iter, converged = 0, False
        while n_iter < self.max_iter and not converged:
            params, weights, alive = self._m_step_all(data, resp, params, alive)
            resp, new_ll = self._e_step(data, params, weights)
            converged = abs(new_ll - ll) < self.tol
            ll, n_iter = new_ll, n_iter + 1
        return params, weights, ll, n_iter, converged

    def _m_step_all(self, data, resp, params, alive):
        mass = resp.sum(axis=1)
        alive = alive & (mass >= _EMPTY_MASS)
        params = self._m_step(data, resp, mass, params, alive)
        weights = np.where(alive, mass, 0.0)
        return params, weights / weights.sum(), alive

    def _e_step(self, data, params, weights):
        with np.errstate(divide="ignore"):  # log(0) = -inf for dropped components
            log_prob = self._log_pdf(data, params) + np.log(weights)[:, None]
        norm = _logsumexp_components(log_prob)
        mean = float(norm.mean()) if norm.size else 0.0  # predict_proba of no samples
        return np.exp(log_prob - norm[None, :]), mean

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError(f"{self._name}: call fit() first")

    def score_samples(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Log-likelihood of each (clipped) sample under the fitted mixture, [N]."""
        self._check_fitted()
        data = self._prepare(x)
        with np.errstate(divide="ignore"):
            log_prob = self._log_pdf(data, self._get_params()) + np.log(self.weights_)[:, None]
        return _logsumexp_components(log_prob)

    def score(self, x: np.ndarray | torch.Tensor) -> float:
        """Mean log-likelihood of ``x`` (what ``lower_bound_`` is on the training data)."""
        return float(self.score_samples(x).mean())

    def predict_proba(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Posterior probability of each component for each sample, [N, K]."""
        self._check_fitted()
        resp, _ = self._e_step(self._prepare(x), self._get_params(), self.weights_)
        return np.ascontiguousarray(resp.T)

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Most probable component of each sample, [N] int64 (ties: lowest index)."""
        self._check_fitted()
        resp, _ = self._e_step(self._prepare(x), self._get_params(), self.weights_)
        return resp.argmax(axis=0).astype(np.int64)

    def fit_predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """``fit(x)`` then ``predict(x)``."""
        return self.fit(x).predict(x)


class BetaMixture(_Mixture):
    """Mixture of K Beta distributions on λ in (0, 1), fitted by EM (DaWin, two models).

    M-step: weighted method of moments per component k with responsibilities r,
    m = Σ r x / N_k, v = min(Σ r (x - m)² / N_k, m(1 - m)/4) + 1e-12,
    s = m(1 - m)/v - 1, α = s·m, β = s·(1 - m), weight N_k / N (as the DaWin authors).
    The variance is taken in the two-pass form, equal to Σ r x² / N_k - m² but free of
    cancellation. Initialisation: hard k-means labels on λ, ``n_init`` restarts, the best
    mean log-likelihood wins; stop when it changes by less than ``tol`` or after
    ``max_iter`` iterations. λ is clipped into [eps, 1 - eps] before taking logs.

    Parameters
    ----------
    n_components : int
        K, the number of components (default 3).
    n_init : int
        k-means initialisations, each followed by a full EM run (default 3).
    max_iter, tol
        EM stops after ``max_iter`` iterations or when the mean log-likelihood changes by
        less than ``tol``.
    seed : int or None
        Seed of the numpy Generator behind the k-means seeding: equal seeds give equal fits.
    eps : float
        Clipping margin, in [1e-10, 0.5).

    Attributes
    ----------
    alphas_, betas_ : ndarray [K]
    means_ : ndarray [K]
        α / (α + β): the cluster coefficients λ_k. Components are sorted by mean.
    weights_ : ndarray [K]
        Mixing weights (0 for a dropped component).
    lower_bound_ : float
        Mean log-likelihood of the training data at the end of the best run.
    n_iter_ : int
    converged_ : bool
    """

    _name = "BetaMixture"

    def _prepare(self, x):
        x = _as_float64(x, self._name)
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise ValueError(f"{self._name}: input must be [N] or [N, 1], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{self._name}: input contains NaN or infinity")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{self._name}: input must lie in [0, 1]")
        x = np.clip(x, self.eps, 1.0 - self.eps)
        return x, np.log(x), np.log1p(-x)

    def _features(self, data):
        return data[0][:, None]

    def _log_pdf(self, data, params):
        _, logx, log1mx = data
        a, b = params
        return (a - 1)[:, None] * logx + (b - 1)[:, None] * log1mx - betaln(a, b)[:, None]

    def _m_step(self, data, resp, mass, params, alive):
        x = data[0]
        if params is None:  # clusters k-means left empty keep the moment fit of all the data
            a0, b0 = self._moments(x, np.ones((1, x.shape[0])), np.array([float(x.shape[0])]))
            a, b = np.repeat(a0, self.n_components), np.repeat(b0, self.n_components)
        else:
            a, b = params[0].copy(), params[1].copy()
        a[alive], b[alive] = self._moments(x, resp[alive], mass[alive])
        return a, b

    @staticmethod
    def _moments(x, r, mass):
        """Method-of-moments (α, β) for x [N] weighted by each row of r [K, N]."""
        m = np.einsum("kn,n->k", r, x) / mass
        var = (r * (x[None, :] - m[:, None]) ** 2).sum(axis=1) / mass
        m1m = m * (1.0 - m)
        v = np.minimum(var, m1m / 4) + _TINY_VAR
        s = np.maximum(m1m / v - 1.0, 1e-6)  # > 0 already whenever eps >> _TINY_VAR
        return s * m, s * (1.0 - m)

    def _finish(self, params, weights):
        a, b = params
        order = np.argsort(a / (a + b), kind="stable")
        self.alphas_, self.betas_, self.weights_ = a[order], b[order], weights[order]
        self.means_ = self.alphas_ / (self.alphas_ + self.betas_)

    def _get_params(self):
        return self.alphas_, self.betas_


def _inv_digamma(y: np.ndarray) -> np.ndarray:
    """ψ⁻¹(y) by Newton's method from Minka's starting point (5 steps: ~14 digits)."""
    x = np.empty_like(y)
    big = y >= -2.22
    x[big] = np.exp(y[big]) + 0.5
    x[~big] = -1.0 / (y[~big] + _EULER)
    for _ in range(5):
        x = np.maximum(x - (digamma(x) - y) / polygamma(1, x), 1e-300)
    return x


class DirichletMixture(_Mixture):
    """Mixture of K Dirichlet distributions on the simplex, fitted by EM (multi-task DaWin).

    M-step: the exact weighted maximum-likelihood α_k of each component, i.e. the
    maximiser of Σ_n r_nk log Dir(x_n | α_k), found by Newton's method (Minka, "Estimating
    a Dirichlet distribution", 2000: the Hessian is diagonal plus rank one, O(D) per step),
    warm-started from the previous α_k. A Newton step that leaves α > 0 or lowers the
    objective is replaced by Minka's fixed-point step ψ(α_kj) = ψ(Σ_j α_kj) + mean log x_j,
    which always raises it, so EM never decreases the likelihood. Why not the fixed point
    alone: it converges linearly and needed > 100 steps per M-step at D = 8. Why not the
    method of moments: it is not the maximum-likelihood step, so EM loses its guarantee.
    The first M-step, from hard k-means labels, starts from the weighted method of
    moments (mean m, pooled precision s = Σ_j m_j(1 - m_j) / Σ_j var_j - 1). The precision
    Σ_j α_kj is capped at 1e8 (only a component whose samples are all equal gets there;
    its likelihood is unbounded). Unlike the DaWin authors' version, the number of
    components is ``n_components``, independent of the dimension D. Rows are clipped into
    [eps, 1] and renormalised to sum to 1 before taking logs.

    Parameters
    ----------
    n_components, n_init, max_iter, tol, seed, eps
        As in ``BetaMixture``; ``eps`` must also be below 1/D.

    Attributes
    ----------
    alphas_ : ndarray [K, D]
    means_ : ndarray [K, D]
        α / Σα: the cluster coefficients (task weights p_k).
    weights_ : ndarray [K]
        Mixing weights (0 for a dropped component).
    lower_bound_ : float
        Mean log-likelihood of the training data at the end of the best run.
    n_iter_ : int
    converged_ : bool
    """

    _name = "DirichletMixture"
    _newton_steps = 100
    _rtol = 1e-10

    def _prepare(self, x):
        x = _as_float64(x, self._name)
        if x.ndim != 2 or x.shape[1] < 2:
            raise ValueError(f"{self._name}: input must be [N, D] with D >= 2, got {x.shape}")
        if hasattr(self, "alphas_") and x.shape[1] != self.alphas_.shape[1]:
            raise ValueError(
                f"{self._name}: fitted on D = {self.alphas_.shape[1]}, got D = {x.shape[1]}"
            )
        if not np.isfinite(x).all():
            raise ValueError(f"{self._name}: input contains NaN or infinity")
        if self.eps * x.shape[1] >= 1:
            raise ValueError(f"{self._name}: eps = {self.eps} must be below 1/D = 1/{x.shape[1]}")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{self._name}: input must lie in [0, 1]")
        if x.size and np.abs(x.sum(axis=1) - 1).max() > 1e-3:
            raise ValueError(f"{self._name}: rows must sum to 1 (points on the simplex)")
        x = np.clip(x, self.eps, 1.0)
        x /= x.sum(axis=1, keepdims=True)
        return x, np.log(x)

    def _features(self, data):
        return data[0]

    def _log_pdf(self, data, params):
        _, logx = data
        alpha = params
        norm = gammaln(alpha.sum(axis=1)) - gammaln(alpha).sum(axis=1)
        return (alpha - 1) @ logx.T + norm[:, None]

    @staticmethod
    def _moments(x, r, mass):
        """Weighted method-of-moments α [K, D] for x [N, D], weights r [K, N]."""
        m = np.einsum("kn,nd->kd", r, x) / mass[:, None]
        var = np.stack([np.einsum("n,nd->d", r[k], (x - m[k]) ** 2)
                        for k in range(r.shape[0])]) / mass[:, None]
        spread = (m * (1 - m)).sum(axis=1)
        s = spread / (var.sum(axis=1) + _TINY_VAR) - 1.0
        s = np.clip(s, 1e-3, _MAX_CONCENTRATION)
        return m * s[:, None]

    @staticmethod
    def _objective(alpha, mean_log):
        """Expected log-likelihood per unit of responsibility, per component [K]."""
        return (
            gammaln(alpha.sum(axis=1))
            - gammaln(alpha).sum(axis=1)
            + ((alpha - 1) * mean_log).sum(axis=1)
        )

    def _max_likelihood(self, alpha, mean_log):
        """Weighted Dirichlet MLE per row: Newton steps, fixed-point steps as fallback."""
        f = self._objective(alpha, mean_log)
        for _ in range(self._newton_steps):
            total = alpha.sum(axis=1, keepdims=True)
            # Newton (Minka §1): the Hessian is diag(-ψ'(α)) + ψ'(Σα) 11ᵀ, solved in O(D).
            grad = digamma(total) - digamma(alpha) + mean_log
            q = -polygamma(1, alpha)
            z = polygamma(1, total)
            b = (grad / q).sum(axis=1, keepdims=True) / (1 / z + (1 / q).sum(axis=1, keepdims=True))
            newton = alpha - (grad - b) / q
            ok = (newton > 0).all(axis=1)
            newton[~ok] = alpha[~ok]
            f_newton = self._objective(newton, mean_log)
            ok &= f_newton >= f - 1e-12 * (1 + np.abs(f))  # rounding near the optimum
            # Minka's fixed point ψ(α_j) = ψ(Σα) + mean log x_j: always increases f.
            fixed = _inv_digamma(digamma(total) + mean_log)
            new = np.where(ok[:, None], newton, fixed)
            new *= np.minimum(1.0, _MAX_CONCENTRATION / new.sum(axis=1, keepdims=True))
            done = (np.abs(new - alpha) <= self._rtol * alpha).all()
            alpha, f = new, self._objective(new, mean_log)
            if done:
                break
        return alpha

    def _m_step(self, data, resp, mass, params, alive):
        x, logx = data
        if params is None:
            # Start from the moments; clusters k-means left empty keep those of all the data.
            start = self._moments(x, resp[alive], mass[alive])
            params = np.repeat(
                self._moments(x, np.ones((1, x.shape[0])), np.array([float(x.shape[0])])),
                self.n_components,
                axis=0,
            )
        else:
            params = params.copy()
            start = params[alive]
        mean_log = np.einsum("kn,nd->kd", resp[alive], logx) / mass[alive, None]
        params[alive] = self._max_likelihood(start, mean_log)
        return params

    def _finish(self, params, weights):
        self.alphas_ = params
        self.weights_ = weights
        self.means_ = params / params.sum(axis=1, keepdims=True)

    def _get_params(self):
        return self.alphas_
