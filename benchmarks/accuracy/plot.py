"""One PNG per table: calibrated-loss distributions of each row, like the paper's Figure 2."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np


def plot_table(title: str, results: list[dict[str, Any]], path: Path) -> Path:
    """Histograms (log x) of profile, belonging and non-belonging losses, threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    for ax, res in zip(axes.flat, results, strict=False):
        dists = {k: np.asarray(v, float) for k, v in res["calibrated"].items()}
        finite = np.concatenate([d[np.isfinite(d) & (d > 0)] for d in dists.values()])
        bins = np.geomspace(finite.min() * 0.9, finite.max() * 1.1, 40)
        colours = {"profile": "0.6", "positives": "tab:blue", "negatives": "tab:red"}
        names = {"profile": "profile (own, seed 0)", "positives": "belonging",
                 "negatives": "non-belonging"}
        for key, d in dists.items():
            ax.hist(d[np.isfinite(d) & (d > 0)], bins=bins, alpha=0.55, color=colours[key],
                    label=names[key])
        ax.axvline(res["profile"]["threshold"], color="k", ls="--", lw=1,
                   label="Grubbs threshold")
        ax.set_xscale("log")
        ax.set_xlabel("calibrated loss" if res["row"]["calibrated"] else "loss (uncalibrated)")
        ax.set_ylabel("images")
        label = "\n".join(textwrap.wrap(res["row"]["label"], 55))  # long labels: no overlap
        ax.set_title(f"{label}\nacc {100 * res['accuracy']:.1f} %, "
                     f"AUC {res['auc']:.3f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
