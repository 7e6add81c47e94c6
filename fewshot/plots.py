"""Pictures of episodes, written as PNG with PIL (no plotting library needed)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from episodes import Episode, ImageSet

__all__ = ["episode_grid"]


def episode_grid(images: ImageSet, episode: Episode, out: str | Path, scale: int | None = None, gap: int = 2) -> Path:
    """Write one episode as a grid: row ``c`` holds class ``c``'s support images, a wider gap, then its queries.

    Images ``[C, H, W]`` are upscaled by ``scale`` (default: to about 64 px) with nearest neighbours.
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(out)
    return out
