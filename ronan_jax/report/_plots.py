"""Report figures, drawn with matplotlib's object API on an Agg canvas (no pyplot, so the
caller's backend and global figure registry are left alone) and returned as PNG data URIs."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

DPI = 144
"""Pixels per inch of the PNGs; the template shows them at 96 px per inch (sharp on HiDPI)."""

COLOURS = {
    "belonging": "#1b9e77",
    "non-belonging": "#d95f02",
    "unlabelled": "#7570b3",
    "profile": "#222222",
    "normal": "#666666",
    "threshold": "#c0392b",
}
_FONT = {"axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9}


def _figure(width_in: float, height_in: float, margins: dict[str, float]) -> Figure:
    # Fixed margins, not a layout engine: constrained layout draws every figure twice.
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    fig.subplots_adjust(**margins)
    FigureCanvasAgg(fig)
    return fig


def figure_data_uri(fig: Figure) -> str:
    """Render a figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _use_log_axis(values: np.ndarray) -> bool:
    """Log x when every value is positive and they span at least a decade."""
    return bool(values.size and values.min() > 0 and values.max() / values.min() >= 10.0)


def _edges(values: np.ndarray, log: bool, n_bins: int) -> np.ndarray:
    """Bin edges covering all values, widened around a single (or all-equal) value."""
    lo, hi = float(values.min()), float(values.max())
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    span = hi - lo
    if span <= 1e-12 * max(1.0, abs(hi)):
        half = 0.5 if log else max(0.5 * abs(hi), 0.5)
        lo, hi = lo - half, hi + half
        n_bins = min(n_bins, 10)
    else:
        pad = 0.03 * span
        lo, hi = lo - pad, hi + pad
    return np.logspace(lo, hi, n_bins + 1) if log else np.linspace(lo, hi, n_bins + 1)


def calibrated_loss_histogram(
    groups: Mapping[str, Sequence[float]],
    profile_losses: Sequence[float] | None,
    mu: float | None,
    sigma: float | None,
    threshold: float | None,
    critical_value: float | None,
) -> tuple[str, bool] | None:
    """Audited calibrated losses (stacked by group) against the belonging profile.

    ``groups`` maps a legend name ("belonging", "non-belonging", "unlabelled") to finite
    losses. Every histogram is normalised to the fraction of its own set per bin so the
    N-image profile and a large audit share an axis; the fitted normal N(mu, sigma) is drawn
    as the fraction per bin it predicts, the Grubbs threshold as a vertical line.
    Returns ``(data_uri, log_x)``, or None when there is nothing to draw.
    """
    audited = {k: np.asarray(v, dtype=np.float64) for k, v in groups.items() if len(v)}
    prof = np.asarray(profile_losses if profile_losses is not None else [], dtype=np.float64)
    prof = prof[np.isfinite(prof)]
    n_audited = sum(v.size for v in audited.values())
    if n_audited == 0 and prof.size == 0:
        return None
    everything = np.concatenate([*audited.values(), prof])
    if threshold is not None and math.isfinite(threshold):
        everything_t = np.append(everything, threshold)
        # Keep the threshold inside the axis, unless it would force a linear axis.
        if not _use_log_axis(everything) or threshold > 0:
            everything = everything_t
    log = _use_log_axis(everything)
    n_bins = int(np.clip(2 * math.sqrt(max(n_audited, prof.size)), 10, 50))
    edges = _edges(everything, log, n_bins)

    fig = _figure(7.5, 3.6, {"left": 0.09, "right": 0.98, "bottom": 0.14, "top": 0.97})
    with rc_context(_FONT):
        ax = fig.add_subplot()
        if audited:
            names = list(audited)
            ax.hist(
                [audited[k] for k in names],
                bins=edges,
                stacked=True,
                weights=[np.full(audited[k].size, 1.0 / n_audited) for k in names],
                color=[COLOURS.get(k, "#999999") for k in names],
                label=[f"audited: {k} (n={audited[k].size})" for k in names],
                alpha=0.85,
                edgecolor="white",
                linewidth=0.4,
            )
        if prof.size:
            ax.hist(
                prof,
                bins=edges,
                weights=np.full(prof.size, 1.0 / prof.size),
                histtype="step",
                color=COLOURS["profile"],
                linewidth=1.6,
                label=f"profile: model's own images (N={prof.size})",
            )
        if mu is not None and sigma is not None and sigma > 0:
            x = (
                np.geomspace(edges[0], edges[-1], 400)
                if log
                else np.linspace(edges[0], edges[-1], 400)
            )
            pdf = np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
            if log:
                width = math.log(edges[1] / edges[0])
                per_bin = pdf * x * width
            else:
                per_bin = pdf * (edges[1] - edges[0])
            ax.plot(
                x,
                per_bin,
                color=COLOURS["normal"],
                linestyle="--",
                linewidth=1.2,
                label=f"fitted normal (\u03bc={mu:.4g}, \u03c3={sigma:.4g})",
            )
        if threshold is not None and math.isfinite(threshold) and (threshold > 0 or not log):
            g = f", G={critical_value:.4g}" if critical_value is not None else ""
            ax.axvline(
                threshold,
                color=COLOURS["threshold"],
                linewidth=1.8,
                label=f"Grubbs threshold \u03bc + G\u00b7\u03c3 = {threshold:.4g}{g}",
            )
        if log:
            ax.set_xscale("log")
            # plain numbers (0.5, 1, 2, 5, 10), not 10^k, and labels between the decades
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            if math.log10(edges[-1] / edges[0]) <= 3:
                ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
                ax.xaxis.set_minor_formatter(plain)
                ax.tick_params(axis="x", which="minor", labelsize=8)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom for the legend
        ax.set_xlabel(
            "calibrated loss A'(M, x) = A(M, x) / A(Mr, x)" + ("  (log scale)" if log else "")
        )
        ax.set_ylabel("fraction of set per bin")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
        return figure_data_uri(fig), log


def roc_plot(
    fpr: np.ndarray,
    tpr: np.ndarray,
    auc: float,
    operating_point: tuple[float, float] | None,
) -> str:
    """ROC curve of "lower calibrated loss = belonging", with the Grubbs verdict's point."""
    fig = _figure(4.2, 4.0, {"left": 0.15, "right": 0.97, "bottom": 0.13, "top": 0.97})
    with rc_context(_FONT):
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#aaaaaa", linestyle=":", linewidth=1, label="chance")
        ax.plot(fpr, tpr, color=COLOURS["belonging"], linewidth=2, label=f"ROC (AUC = {auc:.4f})")
        if operating_point is not None:
            ax.plot(
                [operating_point[0]],
                [operating_point[1]],
                "o",
                color=COLOURS["threshold"],
                markersize=7,
                label="Grubbs verdicts",
            )
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (non-belonging called belonging)")
        ax.set_ylabel("true positive rate")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        return figure_data_uri(fig)
