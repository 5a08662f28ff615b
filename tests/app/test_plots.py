"""The results figure: the legend never covers the tops of the DaWin bars."""

from __future__ import annotations

import numpy as np
import pytest

from dawin_fast.app.plots import make_figure, save_plot

METHODS = ["model 0", "model 1", "WiSE-FT (λ=0.5)", "output ensemble", "classifier selection",
           "DaWin per-sample", "DaWin mixture"]


def results(accuracies, seed):
    rng = np.random.default_rng(seed)
    report = {m: {"accuracy": a} for m, a in zip(METHODS, accuracies, strict=True)}
    lam = rng.beta(6, 3, 300)
    report["_coefficients"] = np.stack([1 - lam, lam], 1).tolist()
    report["_mixture"] = {"weights": [0.5, 0.5], "alphas": [5.0, 8.0], "betas": [3.0, 4.0],
                          "means": [0.6, 0.66]}
    return report


# High accuracies at the right end: where a legend in the corner sat on the bars.
SETS = {"in-distribution": results([0.94, 0.96, 0.96, 0.96, 0.96, 0.99, 0.99], 0),
        "shifted": results([0.74, 0.59, 0.71, 0.69, 0.68, 0.98, 0.97], 1)}


def test_accuracy_legend_is_clear_of_every_bar():
    import matplotlib.pyplot as plt

    fig = make_figure(SETS)
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent()
        bars = [patch.get_window_extent() for patch in ax.patches]
        assert len(bars) == len(METHODS) * len(SETS)
        assert not [b for b in bars if legend.overlaps(b)]
    finally:
        plt.close(fig)


def test_save_plot_writes_only_the_target(tmp_path):
    save_plot(SETS, str(tmp_path / "plot.svg"))
    assert [p.name for p in tmp_path.iterdir()] == ["plot.svg"]
    assert (tmp_path / "plot.svg").read_text().lstrip().startswith("<?xml")


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import matplotlib.figure

    def broken(self, *args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        save_plot(SETS, str(tmp_path / "plot.png"))
    assert list(tmp_path.iterdir()) == []


def test_more_than_two_models_plot_each_weight_without_warnings(tmp_path):
    import warnings

    three = {m: {"accuracy": 0.5} for m in METHODS[:2] + ["model 2", "weight average",
                                                           "DaWin per-sample", "DaWin mixture"]}
    rows = np.random.default_rng(0).dirichlet([2, 3, 4], 50)
    three["_coefficients"] = rows.tolist()
    three["_mixture"] = {"means": rows[:3].tolist(), "weights": [0.3, 0.3, 0.4]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_plot({"data": three}, str(tmp_path / "three.png"))
    assert (tmp_path / "three.png").stat().st_size > 10_000


def _lambda_set(lam, mixture=None):
    report = {m: {"accuracy": 0.9} for m in METHODS}
    report["_coefficients"] = np.stack([1 - lam, lam], 1).tolist()
    if mixture:
        report["_mixture"] = mixture
    return report


def _drawn(fig):
    """(accuracy axes, λ axes) after drawing."""
    fig.canvas.draw()
    return fig.axes


def test_accuracy_axis_starts_at_zero():
    import matplotlib.pyplot as plt

    fig = make_figure(SETS)
    try:
        assert _drawn(fig)[0].get_ylim() == (0.0, 100.0)
    finally:
        plt.close(fig)


def test_lambda_panel_zooms_to_the_data_and_shows_both_histograms():
    """Data in 0.40-0.60: the panel spans about that, and each set's histogram is an
    outline (a filled one hid the other)."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    sets = {"a": _lambda_set(rng.uniform(0.40, 0.60, 200)),
            "b": _lambda_set(rng.uniform(0.45, 0.55, 200))}
    fig = make_figure(sets)
    try:
        ax = _drawn(fig)[1]
        low, high = ax.get_xlim()
        assert 0.35 <= low <= 0.40 and 0.60 <= high <= 0.65
        histograms = [p for p in ax.patches if p.get_label() in ("λ, a", "λ, b")]
        assert len(histograms) == 2 and not any(p.get_fill() for p in histograms)
    finally:
        plt.close(fig)


def test_a_near_degenerate_component_draws_no_spike():
    """A component with α ≈ 9e6 (all its samples at one λ) is drawn as the mass it puts
    in its bin, like the histogram, not as a density of thousands."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    lam = np.concatenate([rng.beta(20, 20, 150), np.full(50, 0.55)])
    mixture = {"weights": [0.75, 0.25], "alphas": [20.0, 9.0e6], "betas": [20.0, 7.36e6],
               "means": [0.5, 0.55]}
    fig = make_figure({"set": _lambda_set(lam, mixture)})
    try:
        ax = _drawn(fig)[1]
        heights = [max(p.get_path().vertices[:, 1]) for p in ax.patches]
        assert len(heights) == 2 and max(heights) < 3 * heights[0]  # mixture vs data
        assert ax.get_ylim()[1] < 3 * heights[0]
    finally:
        plt.close(fig)


def test_one_set_puts_no_data_name_in_the_legends():
    """``eval`` names its one set after the data folder ("imgs"): no legend reads it."""
    import matplotlib.pyplot as plt

    fig = make_figure({"imgs": SETS["shifted"]})
    try:
        acc, lam = _drawn(fig)
        assert acc.get_legend() is None
        labels = [t.get_text() for t in lam.get_legend().get_texts()]
        assert labels == ["λ", "Beta mixture"]
    finally:
        plt.close(fig)
