"""Beta and Dirichlet mixtures: recovery, exact M-steps, robustness, determinism."""

import itertools
import time

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.optimize import minimize
from scipy.special import gammaln

from dawin_fast.algorithm.mixture import BetaMixture, DirichletMixture, kmeans

BETA_MEANS = np.array([0.15, 0.5, 0.85])


def balanced_labels(rng, n, k=3):
    z = np.repeat(np.arange(k), -(-n // k))[:n]
    rng.shuffle(z)
    return z


def sample_beta(seed, n, concentration):
    rng = np.random.default_rng(seed)
    z = balanced_labels(rng, n)
    m = BETA_MEANS[z]
    return rng.beta(m * concentration, (1 - m) * concentration), z


def dirichlet_means(d):
    # component k puts 0.7 on coordinate k, the rest spread evenly
    means = np.full((3, d), 0.3 / (d - 1))
    means[np.arange(3), np.arange(3)] = 0.7
    return means


def sample_dirichlet(seed, n, d, concentration=40.0):
    rng = np.random.default_rng(seed)
    z = balanced_labels(rng, n)
    means = dirichlet_means(d)
    x = np.concatenate(
        [rng.dirichlet(means[k] * concentration, size=(z == k).sum()) for k in range(3)]
    )
    out = np.empty_like(x)
    out[np.argsort(z, kind="stable")] = x  # put each sample back at its label's position
    return out, z, means


def best_permutation(pred, z, k=3):
    """The relabelling of predicted components that agrees most with z, and its accuracy."""
    perm = max(itertools.permutations(range(k)), key=lambda p: (np.array(p)[pred] == z).sum())
    return np.array(perm), float((np.array(perm)[pred] == z).mean())


# At N = 50 and concentration 40 even the generating model mislabels more than 5% of some
# draws (the components overlap), so the smallest N uses tighter components.
@pytest.mark.parametrize(
    ("n", "concentration", "seeds"),
    [
        (50, 100.0, range(0, 8)),
        (200, 40.0, range(8, 14)),
        (2000, 40.0, range(14, 18)),
        (50_000, 40.0, (18, 19)),
    ],
)
def test_beta_mixture_recovers_components(n, concentration, seeds):
    # mean of a component of n/3 samples has std ~0.135/sqrt(n): 0.6/sqrt(n) is > 4 sigma
    tol = 0.6 / np.sqrt(n) + 0.002
    for seed in seeds:
        x, z = sample_beta(seed, n, concentration)
        model = BetaMixture(seed=seed).fit(x)
        assert model.converged_
        np.testing.assert_allclose(model.means_, BETA_MEANS, atol=tol)  # sorted by mean
        np.testing.assert_allclose(model.weights_, 1 / 3, atol=max(0.05, 2 / np.sqrt(n)))
        _, accuracy = best_permutation(model.predict(x), z)
        assert accuracy >= 0.95, (n, seed, accuracy)
        if n >= 2000:
            np.testing.assert_allclose(model.alphas_ + model.betas_, concentration, rtol=0.25)


@pytest.mark.parametrize("d", [3, 8])
@pytest.mark.parametrize(
    ("n", "seeds"), [(50, range(0, 6)), (500, range(6, 10)), (20_000, (10, 11))]
)
def test_dirichlet_mixture_recovers_components(d, n, seeds):
    tol = 0.6 / np.sqrt(n) + 0.002
    for seed in seeds:
        x, z, means = sample_dirichlet(seed, n, d)
        model = DirichletMixture(seed=seed).fit(x)
        assert model.converged_
        assert model.means_.shape == (3, d) and model.alphas_.shape == (3, d)
        perm, accuracy = best_permutation(model.predict(x), z)
        assert accuracy >= 0.95, (d, n, seed, accuracy)
        fitted = np.empty_like(model.means_)
        fitted[perm] = model.means_  # component k of the model is generating component perm[k]
        np.testing.assert_allclose(fitted, means, atol=tol)
        np.testing.assert_allclose(model.means_.sum(axis=1), 1.0)
        if n >= 20_000:
            np.testing.assert_allclose(model.alphas_.sum(axis=1), 40.0, rtol=0.25)


def test_dirichlet_honours_n_components():
    # the authors' version ties K to D; here K = 2 with D = 5 and K = 4 with D = 2
    x, _, _ = sample_dirichlet(0, 300, 5)
    model = DirichletMixture(n_components=2).fit(x)
    assert model.means_.shape == (2, 5) and model.weights_.shape == (2,)
    assert model.predict_proba(x).shape == (300, 2)
    x2 = np.random.default_rng(1).dirichlet([2.0, 3.0], size=100)
    assert DirichletMixture(n_components=4).fit(x2).alphas_.shape == (4, 2)


def test_beta_m_step_is_the_method_of_moments():
    # one component: responsibilities are all 1, so α, β are the moments of all the data
    x = np.random.default_rng(0).beta(3.0, 5.0, size=1000)
    model = BetaMixture(n_components=1).fit(x)
    m, var = x.mean(), x.var()
    s = m * (1 - m) / (min(var, m * (1 - m) / 4) + 1e-12) - 1
    np.testing.assert_allclose(model.alphas_, [s * m], rtol=1e-10)
    np.testing.assert_allclose(model.betas_, [s * (1 - m)], rtol=1e-10)
    np.testing.assert_allclose(model.means_, [m], rtol=1e-10)
    # U-shaped data: the variance is capped at m(1 - m)/4, i.e. s = 3
    u = np.r_[np.full(10, 0.05), np.full(10, 0.95)]
    model = BetaMixture(n_components=1).fit(u)
    np.testing.assert_allclose(model.alphas_, [1.5], rtol=1e-9)
    np.testing.assert_allclose(model.betas_, [1.5], rtol=1e-9)


def test_beta_one_em_iteration_by_hand():
    x = np.r_[np.linspace(0.1, 0.2, 20), np.linspace(0.6, 0.9, 30)]
    model = BetaMixture(n_components=2, n_init=1, max_iter=1).fit(x)

    def moments(r):
        n_k = r.sum()
        m = (r * x).sum() / n_k
        v = min((r * x**2).sum() / n_k - m**2, m * (1 - m) / 4) + 1e-12
        s = m * (1 - m) / v - 1
        return s * m, s * (1 - m), n_k / len(x)

    # k-means on these two separated blocks labels them exactly; then one E and one M step
    params = [moments((np.arange(50) < 20) * 1.0), moments((np.arange(50) >= 20) * 1.0)]
    joint = np.stack([w * stats.beta.pdf(x, a, b) for a, b, w in params], axis=1)
    resp = joint / joint.sum(axis=1, keepdims=True)
    params = [moments(resp[:, 0]), moments(resp[:, 1])]
    np.testing.assert_allclose(model.alphas_, [p[0] for p in params], rtol=1e-8)
    np.testing.assert_allclose(model.betas_, [p[1] for p in params], rtol=1e-8)
    np.testing.assert_allclose(model.weights_, [p[2] for p in params], rtol=1e-8)
    assert model.n_iter_ == 1
    # the reported mean log-likelihood is that of the final parameters
    mixture = sum(w * stats.beta.pdf(x, a, b) for a, b, w in params)
    assert model.lower_bound_ == pytest.approx(np.log(mixture).mean(), rel=1e-10)
    assert model.score(x) == pytest.approx(model.lower_bound_, rel=1e-12)


def test_dirichlet_m_step_is_the_maximum_likelihood():
    x = np.random.default_rng(0).dirichlet([1.0, 2.0, 3.0, 0.5], size=3000)
    model = DirichletMixture(n_components=1).fit(x)
    # α_3 = 0.5 puts some values below eps = 1e-6: the documented clip and renormalisation
    x = np.clip(x, 1e-6, 1.0)
    x /= x.sum(axis=1, keepdims=True)
    mean_log = np.log(x).mean(axis=0)

    def nll(log_alpha):
        a = np.exp(log_alpha)
        return -(gammaln(a.sum()) - gammaln(a).sum() + ((a - 1) * mean_log).sum())

    ref = np.exp(minimize(nll, np.zeros(4), method="BFGS", options={"gtol": 1e-10}).x)
    np.testing.assert_allclose(model.alphas_[0], ref, rtol=1e-5)
    expected_ll = stats.dirichlet.logpdf(x.T, model.alphas_[0]).mean()
    assert model.lower_bound_ == pytest.approx(expected_ll, rel=1e-10)


def test_predict_proba_and_predict():
    x, _ = sample_beta(0, 300, 40.0)
    model = BetaMixture().fit(x)
    proba = model.predict_proba(x)
    assert proba.shape == (300, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(model.predict(x), proba.argmax(axis=1))
    assert model.predict(np.array([0.0, 0.5, 1.0])).tolist() == [0, 1, 2]
    joint = np.stack(
        [
            w * stats.beta.pdf(0.3, a, b)
            for a, b, w in zip(model.alphas_, model.betas_, model.weights_, strict=True)
        ]
    )
    np.testing.assert_allclose(model.predict_proba([0.3])[0], joint / joint.sum(), rtol=1e-9)


@pytest.mark.parametrize("cls", [BetaMixture, DirichletMixture])
def test_torch_input_matches_numpy(cls):
    if cls is BetaMixture:
        x, _ = sample_beta(1, 200, 40.0)
    else:
        x, _, _ = sample_dirichlet(1, 200, 4)
    a = cls(seed=3).fit(x)
    b = cls(seed=3).fit(torch.from_numpy(x))
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.predict(x), b.predict(torch.from_numpy(x)))
    c = cls(seed=3).fit(torch.from_numpy(x).float())  # float32 in, float64 inside
    np.testing.assert_allclose(c.means_, a.means_, atol=1e-5)


@pytest.mark.parametrize("cls", [BetaMixture, DirichletMixture])
def test_deterministic_for_a_seed(cls):
    if cls is BetaMixture:
        x, _ = sample_beta(2, 500, 10.0)  # overlapping components: inits matter
    else:
        x, _, _ = sample_dirichlet(2, 500, 3, concentration=5.0)
    a, b = cls(seed=7).fit(x), cls(seed=7).fit(x.copy())
    for name in ("means_", "weights_", "alphas_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.lower_bound_ == b.lower_bound_ and a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


@pytest.mark.parametrize("value", [0.0, 1.0, 0.3])
def test_beta_all_values_equal(value):
    model = BetaMixture().fit(np.full(100, value))
    expected = min(max(value, 1e-6), 1 - 1e-6)
    assert np.isfinite(model.alphas_).all() and np.isfinite(model.betas_).all()
    np.testing.assert_allclose(model.means_, expected, atol=1e-9)  # all collapse there
    assert model.weights_.sum() == pytest.approx(1.0) and (model.weights_ >= 0).all()
    assert np.isfinite(model.lower_bound_)
    assert len(set(model.predict(np.full(5, value)).tolist())) == 1


def test_beta_exact_zeros_and_ones():
    rng = np.random.default_rng(0)
    x = np.r_[np.zeros(40), np.ones(40), rng.beta(20, 20, size=40)]
    model = BetaMixture().fit(x)
    assert np.isfinite(model.alphas_).all() and np.isfinite(model.lower_bound_)
    np.testing.assert_allclose(model.means_, [1e-6, 0.5, 1 - 1e-6], atol=0.02)
    labels = model.predict(x)
    assert (labels[:40] == 0).all() and (labels[40:80] == 2).all() and (labels[80:] == 1).all()


def test_fewer_distinct_values_than_components():
    model = BetaMixture().fit(np.r_[np.full(30, 0.2), np.full(20, 0.7)])
    assert np.isfinite(model.alphas_).all() and np.isfinite(model.means_).all()
    assert (model.weights_ == 0).sum() == 1  # one component dropped
    live = model.weights_ > 0
    np.testing.assert_allclose(sorted(model.means_[live]), [0.2, 0.7], atol=1e-9)
    np.testing.assert_allclose(sorted(model.weights_[live]), [0.4, 0.6])
    assert not np.isnan(model.predict_proba([0.2, 0.7])).any()

    d = DirichletMixture().fit(np.full((60, 3), 1 / 3))
    assert np.isfinite(d.alphas_).all()
    np.testing.assert_allclose(d.means_, 1 / 3, atol=1e-9)
    assert (d.weights_ > 0).sum() == 1
    d = DirichletMixture().fit(np.eye(4)[np.arange(90) % 2])  # exact vertices, 2 distinct
    assert np.isfinite(d.alphas_).all() and (d.weights_ > 0).sum() == 2
    assert set(d.predict(np.eye(4)[:2]).tolist()) == set(np.flatnonzero(d.weights_ > 0))


def test_emptied_component_is_dropped_with_finite_params():
    x, _ = sample_beta(0, 90, 40.0)
    model = BetaMixture()
    data = model._prepare(x)
    resp = np.zeros((3, 90))  # component-major [K, N]
    resp[0], resp[1] = 0.5, 0.5  # component 2 gets no responsibility at all
    params = (np.array([2.0, 3.0, 4.0]), np.array([5.0, 3.0, 2.0]))
    params, weights, alive = model._m_step_all(data, resp, params, np.ones(3, bool))
    assert alive.tolist() == [True, True, False] and weights[2] == 0.0
    assert (params[0][2], params[1][2]) == (4.0, 2.0)  # frozen at its last values
    resp, ll = model._e_step(data, params, weights)
    assert np.isfinite(ll) and np.isfinite(resp).all() and (resp[2] == 0).all()


def test_fewer_samples_than_components():
    with pytest.raises(ValueError, match="2 samples for 3 components"):
        BetaMixture().fit([0.1, 0.9])
    with pytest.raises(ValueError, match="samples for 3 components"):
        DirichletMixture().fit(np.full((2, 3), 1 / 3))
    model = BetaMixture().fit([0.1, 0.5, 0.9])  # N == K works
    assert np.isfinite(model.means_).all()


@pytest.mark.parametrize(
    ("x", "match"),
    [
        ([0.1, np.nan, 0.3, 0.4], "NaN or infinity"),
        ([0.1, np.inf, 0.3, 0.4], "NaN or infinity"),
        ([0.1, -0.2, 0.3, 0.4], r"in \[0, 1\]"),
        ([0.1, 1.2, 0.3, 0.4], r"in \[0, 1\]"),
        (np.full((4, 2), 0.5), r"\[N\] or \[N, 1\]"),
        (np.array(["a", "b", "c"]), "real numbers"),
    ],
)
def test_beta_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        BetaMixture().fit(x)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.array([[0.5, np.nan]] * 4), "NaN or infinity"),
        (np.array([[0.5, 0.6]] * 4), "sum to 1"),
        (np.array([[1.5, -0.5]] * 4), r"in \[0, 1\]"),
        (np.ones((4, 1)), "D >= 2"),
        (np.full(4, 0.5), "D >= 2"),
    ],
)
def test_dirichlet_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        DirichletMixture().fit(x)


def test_bad_parameters_and_unfitted():
    for kwargs in (
        {"n_components": 0},
        {"n_init": 0},
        {"max_iter": 0},
        {"tol": -1.0},
        {"eps": 0.0},
        {"eps": 0.5},
        {"n_components": 2.5},
    ):
        with pytest.raises(ValueError):
            BetaMixture(**kwargs)
    with pytest.raises(RuntimeError, match="fit"):
        BetaMixture().predict([0.5])
    with pytest.raises(ValueError, match="below 1/D"):
        DirichletMixture(eps=0.2).fit(np.full((10, 8), 1 / 8))
    d = DirichletMixture(n_components=2).fit(np.random.default_rng(0).dirichlet([1, 1, 1], 50))
    with pytest.raises(ValueError, match="fitted on D = 3"):
        d.predict(np.full((2, 4), 0.25))
    d.fit(np.random.default_rng(1).dirichlet([1, 1, 1, 1], 50))  # a refit may change D
    assert d.means_.shape == (2, 4)


def test_kmeans():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 0.01, 30), rng.normal(1, 0.01, 20), rng.normal(5, 0.01, 10)]
    labels, centers = kmeans(x[:, None], 3, np.random.default_rng(1))
    _, accuracy = best_permutation(labels, np.repeat([0, 1, 2], [30, 20, 10]))
    assert accuracy == 1.0
    np.testing.assert_allclose(np.sort(centers[:, 0]), [0, 1, 5], atol=0.01)
    again, _ = kmeans(x[:, None], 3, np.random.default_rng(1))
    assert np.array_equal(labels, again)
    # fewer distinct points than clusters: no crash, a cluster stays empty
    labels, centers = kmeans(np.zeros((5, 2)), 3, np.random.default_rng(0))
    assert np.bincount(labels, minlength=3).max() == 5 and np.isfinite(centers).all()


def test_fit_is_fast_at_50k():
    # CI budget: well under a few seconds on 2 cores (~0.3 s measured)
    x, _ = sample_beta(9, 50_000, 40.0)
    y, _, _ = sample_dirichlet(9, 50_000, 8)
    start = time.perf_counter()
    BetaMixture().fit(x)
    DirichletMixture().fit(y)
    assert time.perf_counter() - start < 6.0
