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

    ``sets``: data set name -> ``evaluate``'s report. The caller closes the figure.
    """
    from scipy.stats import beta as beta_dist

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
    low = min(100 * sets[n][m]["accuracy"] for n in names for m in methods)
    ax_acc.set_ylim(max(0, low - 10), 100)
    # Above the axes, under the title: inside, it covered the tops of the last bars.
    ax_acc.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(names),
                  frameon=False, fontsize=8)
    ax_acc.set_title("accuracy per method", pad=22)

    grid = np.linspace(0.001, 0.999, 400)
    two_models = True
    for name in names:
        coefficients = np.asarray(sets[name]["_coefficients"])
        if coefficients.ndim != 2 or coefficients.shape[0] == 0:
            continue
        if coefficients.shape[1] != 2:  # M > 2: each model's weight (Dirichlet rows)
            two_models = False
            for i in range(coefficients.shape[1]):
                ax_lam.hist(coefficients[:, i], bins=40, range=(0, 1), density=True,
                            alpha=0.45, label=f"model {i}, {name}")
            continue
        lam = coefficients[:, 1]
        ax_lam.hist(lam, bins=40, range=(0, 1), density=True, alpha=0.45, label=f"λ, {name}")
        mixture = sets[name].get("_mixture")
        if mixture and "alphas" in mixture:
            pdf = sum(w * beta_dist.pdf(grid, a, b) for w, a, b in
                      zip(mixture["weights"], mixture["alphas"], mixture["betas"], strict=True))
            ax_lam.plot(grid, pdf, label=f"Beta mixture, {name}")
    ax_lam.set_xlabel("λ (weight on model 1)" if two_models else "per-sample weight of each model")
    ax_lam.set_ylabel("density")
    ax_lam.legend(fontsize=8)
    ax_lam.set_title("per-sample coefficients and fitted mixture", pad=22)
    fig.tight_layout()
    return fig


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
