"""The results figure: accuracy per method, and the coefficients with the fitted mixture.

Needs matplotlib (the ``demo`` extra); drawn off-screen (Agg), written atomically.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import UserError
from .outputs import atomic_path, check_writable


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path: str, option: str = "--plot") -> str:
    """``path`` if matplotlib can write that format there; else a ``UserError``."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise UserError(f"{option} needs matplotlib: pip install 'dawin_fast[demo]'") from None
    check_writable(path, option)  # first: /dev/null is no format question
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in formats:
        raise UserError(f"{option} {path}: expected a file name ending in one of "
                        f"{', '.join('.' + f for f in sorted(formats))}")
    return path


def make_figure(sets: dict[str, dict]):
    """Left: accuracy of each method per data set. Right: λ histogram + Beta mixture.

    ``sets``: data set name -> ``evaluate``'s report. The caller closes the figure. With
    one set its name (for ``eval``, a folder or file name) labels nothing. The accuracy
    axis starts at 0; the coefficient panel spans the data's range.
    """
    plt = _pyplot()
    names = list(sets)
    methods = [k for k in sets[names[0]] if not k.startswith("_")]
    fig, (ax_acc, ax_lam) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        accs = [100 * sets[name][m]["accuracy"] for m in methods]
        ax_acc.bar(np.arange(len(methods)) + j * width, accs, width, label=name)
    ax_acc.set_xticks(np.arange(len(methods)) + width * (len(names) - 1) / 2)
    ax_acc.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)  # from 0: a cut axis turns small gaps into large bars
    if len(names) > 1:
        # Above the axes, under the title: inside, it covered the tops of the last bars.
        ax_acc.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(names),
                      frameon=False, fontsize=8)
    ax_acc.set_title("accuracy per method", pad=22)
    two_models = _coefficient_panel(ax_lam, sets)
    ax_lam.set_xlabel("λ (weight on model 1)" if two_models else "per-sample weight of each model")
    ax_lam.set_ylabel("density")
    if ax_lam.get_legend_handles_labels()[0]:
        ax_lam.legend(fontsize=8)
    ax_lam.set_title("per-sample coefficients and fitted mixture", pad=22)
    fig.tight_layout()
    return fig


BINS = 40


def _coefficient_panel(ax, sets: dict[str, dict]) -> bool:
    """Histograms (outlines: several never hide each other) over the data's range, and the
    fitted Beta mixture as mass per bin, like the histogram: a near-degenerate component
    (α, β ~ 1e7) is a narrow peak whose density would dwarf the data, not a spike.
    Returns whether the coefficients are two models' (λ)."""
    from scipy.stats import beta as beta_dist

    names = list(sets)
    columns = {}
    for name in names:
        coefficients = np.asarray(sets[name]["_coefficients"])
        if coefficients.ndim == 2 and coefficients.shape[0] > 0:
            columns[name] = coefficients
    two_models = all(c.shape[1] == 2 for c in columns.values())
    if not columns:
        return two_models
    shown = np.concatenate([c[:, 1:] if c.shape[1] == 2 else c for c in columns.values()],
                           axis=None)
    low, high = _data_range(shown)
    edges = np.linspace(low, high, BINS + 1)
    for name, coefficients in columns.items():
        suffix = f", {name}" if len(names) > 1 else ""
        if coefficients.shape[1] != 2:  # M > 2: each model's weight (Dirichlet rows)
            for i in range(coefficients.shape[1]):
                ax.hist(coefficients[:, i], bins=edges, density=True, histtype="step",
                        linewidth=1.5, label=f"model {i}{suffix}")
            continue
        patches = ax.hist(coefficients[:, 1], bins=edges, density=True, histtype="step",
                          linewidth=1.5, label=f"λ{suffix}")[2]
        mixture = sets[name].get("_mixture")
        if mixture and "alphas" in mixture:
            mass = sum(w * np.diff(beta_dist.cdf(edges, a, b)) for w, a, b in
                       zip(mixture["weights"], mixture["alphas"], mixture["betas"], strict=True))
            ax.stairs(mass / np.diff(edges), edges, linestyle="--", linewidth=1.2,
                      color=patches[0].get_edgecolor(), label=f"Beta mixture{suffix}")
    ax.set_xlim(low, high)
    return two_models


def _data_range(values: np.ndarray) -> tuple[float, float]:
    """[low, high] around the values with a 5% margin, at least 0.02 wide, within [0, 1]."""
    lo, hi = float(values.min()), float(values.max())
    pad = max((hi - lo) * 0.05, 0.01)
    low, high = max(0.0, lo - pad), min(1.0, hi + pad)
    return low, max(high, low + 1e-6)


def save_plot(sets: dict[str, dict], path: str) -> None:
    """``make_figure(sets)`` written to ``path`` atomically (its extension picks the format)."""
    plt = _pyplot()
    fig = make_figure(sets)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


save_demo_plot = save_plot  # the demo's name for it
