"""Look at failed inversions: what a model drew for a set's worst- and best-fitted images.

Picks the ``k`` images of a set with the highest and the ``k`` with the lowest cached loss
(model, metric and learning rate as in the accuracy tables), inverts them again and writes a
grid: each image, its reconstruction, and (``--compare METRIC``) its reconstruction when the
inversion minimises another metric. The cached and the re-measured loss are printed and drawn.

    python -m benchmarks.accuracy.reconstructions ref-photo data:mnist-a --metric mae --compare mse
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np

from benchmarks.accuracy import cache, sets
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.invert import invert

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def extremes(losses: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest then the ``k`` lowest losses (highest first)."""
    order = np.argsort(-np.nan_to_num(losses, nan=np.inf), kind="stable")
    k = min(k, len(order) // 2)
    return np.concatenate([order[:k], order[len(order) - k:]])


def reconstruct(model: str, images_u8: np.ndarray, config: InversionConfig):
    """The inversion of ``images_u8`` on ``model`` (adapted to their shape)."""
    gen = sets.load_model(model).for_shape(tuple(images_u8.shape[1:]))
    return invert(gen, images_u8.astype(np.float32) / np.float32(255.0), config)


def plot(images_u8: np.ndarray, columns: list[tuple[str, np.ndarray, np.ndarray]],
         cached: np.ndarray, title: str, out: Path) -> None:
    """One row per image: the image, then each (label, reconstructions, losses) column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, width = len(images_u8), 1 + len(columns)
    fig, axes = plt.subplots(n, width, figsize=(2.1 * width, 2.1 * n), squeeze=False)
    for i in range(n):
        panels = [("image", images_u8[i] / 255.0, f"cached loss {cached[i]:.4g}")]
        panels += [(label, rec[i], f"loss {loss[i]:.4g}") for label, rec, loss in columns]
        for ax, (label, pic, note) in zip(axes[i], panels, strict=True):
            pic = np.clip(np.asarray(pic, np.float32), 0.0, 1.0)
            ax.imshow(pic[..., 0] if pic.shape[-1] == 1 else pic, cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{label}\n{note}", fontsize=7)
            ax.axis("off")
    fig.suptitle("\n".join(textwrap.wrap(title, 18 * width)), fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="zoo model or overlap DCGAN that inverts the images")
    ap.add_argument("set", help="image set, as in the accuracy tables (e.g. data:mnist-a)")
    ap.add_argument("--metric", default="mse")
    ap.add_argument("--lr", type=float, default=InversionConfig().lr)
    ap.add_argument("--compare", metavar="METRIC", help="also invert under this metric")
    ap.add_argument("--k", type=int, default=4, help="images from each end")
    ap.add_argument("--n", type=int, default=100, help="size of the set the cache holds")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    config = InversionConfig(metric=args.metric, lr=args.lr)
    images = sets.load_set(args.set, args.n)
    try:
        cached, _ = cache.losses(sets.load_model(args.model), images, config, args.set,
                                 cached_only=True)
    except cache.NotCached as exc:
        print(f"error: {exc}; run the accuracy table that needs them first", file=sys.stderr)
        return 2
    pick = extremes(cached, args.k)
    chosen = images[pick]
    res = reconstruct(args.model, chosen, config)
    columns = [(f"{args.model}, {args.metric}", res.reconstruction, res.loss)]
    if args.compare:
        other = reconstruct(args.model, chosen, config.replace(metric=args.compare))
        columns.append((f"{args.model}, {args.compare}", other.reconstruction, other.loss))
    for j, i in enumerate(pick):
        extra = "".join(f", {label}: {loss[j]:.4g}" for label, _, loss in columns)
        print(f"image {i}: cached {args.metric} {cached[i]:.4g}{extra}")
    name = f"reconstructions-{args.model}-{args.set.replace(':', '_')}-{args.metric}"
    out = args.out or RESULTS_DIR / f"{name}-lr{args.lr:g}.png"
    plot(chosen, columns, cached[pick],
         f"{args.set} on {args.model}, lr {args.lr:g}: the {len(pick) // 2} highest and lowest "
         f"cached {args.metric} losses", out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
