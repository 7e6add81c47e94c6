"""Pictures of episodes, written as PNG with PIL, and learning curves drawn with matplotlib (Agg)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from episodes import Episode, ImageSet

__all__ = ["episode_grid", "learning_curves", "mlflow_history", "accuracy_vs_shot"]


def episode_grid(images: ImageSet, episode: Episode, out: str | Path, scale: int | None = None, gap: int = 2,
                 predictions: torch.Tensor | None = None) -> Path:
    """Write one episode as a grid: row ``c`` holds class ``c``'s support images, a wider gap, then its queries.

    Images ``[C, H, W]`` are upscaled by ``scale`` (default: to about 64 px) with nearest neighbours.
    ``predictions`` ``[way*query]`` (episode class indices, in query order) frame each query green when
    it equals the true label (the row) and red otherwise, with the predicted class written on wrong ones.
    """
    c, h, w = images.image_shape
    scale = scale or max(1, 64 // max(h, w))
    shot = episode.support.numel() // episode.way
    query = episode.query.numel() // episode.way
    th, tw = h * scale, w * scale
    cols = shot + query
    sep = 4 * gap
    canvas = torch.full((3, episode.way * (th + gap) + gap, cols * (tw + gap) + gap + sep), 96, dtype=torch.uint8)
    for row in range(episode.way):
        tiles = list(episode.support[row * shot:(row + 1) * shot]) + list(episode.query[row * query:(row + 1) * query])
        for col, idx in enumerate(tiles):
            tile = images.images[idx]
            tile = tile.expand(3, h, w) if c == 1 else tile[:3]
            tile = tile.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            y = gap + row * (th + gap)
            x = gap + col * (tw + gap) + (sep if col >= shot else 0)
            canvas[:, y:y + th, x:x + tw] = tile
            if predictions is not None and col >= shot:
                ok = int(predictions[row * query + col - shot]) == row
                colour = torch.tensor([0, 200, 0] if ok else [230, 0, 0], dtype=torch.uint8)[:, None, None]
                b = max(2, th // 16)  # a frame inside the tile, so neighbouring frames never overlap
                canvas[:, y:y + b, x:x + tw] = colour
                canvas[:, y + th - b:y + th, x:x + tw] = colour
                canvas[:, y:y + th, x:x + b] = colour
                canvas[:, y:y + th, x + tw - b:x + tw] = colour
    img = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    if predictions is not None:
        from PIL import ImageDraw
        draw = ImageDraw.Draw(img)
        for row in range(episode.way):
            for q in range(query):
                p = int(predictions[row * query + q])
                if p != row:
                    x = gap + (shot + q) * (tw + gap) + sep + 2
                    draw.text((x, gap + row * (th + gap) + 1), f"->{p}", fill=(255, 40, 40))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def mlflow_history(tracking_uri: str, run_id: str, names=("train_loss", "train_acc", "val_acc")) -> dict:
    """``{name: (steps, values)}`` of an MLflow run's metric histories (missing metrics left out)."""
    from .tracking import metric_history

    return metric_history(tracking_uri, run_id, names)


def learning_curves(history: dict, out: str | Path, title: str = "") -> Path:
    """Plot train loss (left) and train / val accuracy (right) against the training episode.

    Args:
        history: ``{"train_loss" | "train_acc" | "val_acc": (steps [T], values [T])}``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.5))
    if "train_loss" in history:
        ax_l.plot(*history["train_loss"], lw=0.8, color="tab:red", label="train loss")
    ax_l.set_xlabel("episode")
    ax_l.set_ylabel("cross-entropy")
    for name, colour in (("train_acc", "tab:blue"), ("val_acc", "tab:green")):
        if name in history:
            steps, values = history[name]
            ax_a.plot(steps, values, lw=0.8 if name == "train_acc" else 1.5, color=colour,
                      marker="o" if name == "val_acc" else None, ms=3, label=name.replace("_", " "))
    ax_a.set_xlabel("episode")
    ax_a.set_ylabel("accuracy")
    ax_a.set_ylim(0, 1.02)
    for ax in (ax_l, ax_a):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def accuracy_vs_shot(rows: list, out: str | Path, title: str = "") -> Path:
    """Plot test accuracy +- 95% CI against shot; ``rows`` are ``{"shot", "acc", "ci95"}`` dicts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["shot"])
    shots = [r["shot"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.errorbar(shots, [r["acc"] for r in rows], yerr=[r["ci95"] for r in rows], marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.minorticks_off()
    ax.set_xlabel("shot (support images per class)")
    ax.set_ylabel("test accuracy (95% CI)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    """Lay out, write ``out`` (PNG, parents created) and close ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
