"""The demo's figure: accuracy per method, and the coefficients with the fitted mixture.

Needs matplotlib (the ``demo`` extra); drawn off-screen (Agg) into a PNG file.
"""

from __future__ import annotations

import numpy as np


def save_demo_plot(sets: dict[str, dict], path: str) -> None:
    """Left: accuracy of each method per test set. Right: λ histogram + Beta mixture."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - the demo extra installs it
        raise SystemExit("--plot needs matplotlib: pip install 'dawin_fast[demo]'") from err
    from scipy.stats import beta as beta_dist

    names = list(sets)
    methods = [k for k in sets[names[0]] if not k.startswith("_")]
    fig, (ax_acc, ax_lam) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        accs = [100 * sets[name][m]["accuracy"] for m in methods]
        ax_acc.bar(np.arange(len(methods)) + j * width, accs, width, label=name)
    ax_acc.set_xticks(np.arange(len(methods)) + width * (len(names) - 1) / 2)
    ax_acc.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax_acc.set_ylabel("accuracy (%)")
    low = min(100 * sets[n][m]["accuracy"] for n in names for m in methods)
    ax_acc.set_ylim(max(0, low - 10), 100)
    ax_acc.legend()
    ax_acc.set_title("accuracy per method")

    grid = np.linspace(0.001, 0.999, 400)
    for name in names:
        coefficients = np.asarray(sets[name]["_coefficients"])
        if coefficients.ndim != 2 or coefficients.shape[1] != 2:
            continue
        lam = coefficients[:, 1]
        ax_lam.hist(lam, bins=40, range=(0, 1), density=True, alpha=0.45, label=f"λ, {name}")
        mixture = sets[name].get("_mixture")
        if mixture and "alphas" in mixture:
            pdf = sum(w * beta_dist.pdf(grid, a, b) for w, a, b in
                      zip(mixture["weights"], mixture["alphas"], mixture["betas"], strict=True))
            ax_lam.plot(grid, pdf, label=f"Beta mixture, {name}")
    ax_lam.set_xlabel("λ (weight on model 1)")
    ax_lam.set_ylabel("density")
    ax_lam.legend(fontsize=8)
    ax_lam.set_title("per-sample coefficients and fitted mixture")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
