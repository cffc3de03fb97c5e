"""PNG outputs without a plotting dependency: image grids (one row per class) and loss curves."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from .io import atomic_path


def image_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int | None = None,
               pad: int = 2, scale: int = 2) -> Image.Image:
    """One row per class, up to ``per_class`` images each; ``images`` (N, C, H, W) in [0, 1]."""
    hard = labels.argmax(1) if labels.ndim == 2 else labels
    rows = [images[hard == c] for c in range(num_classes)]
    cols = max(1, min(per_class or max(len(r) for r in rows), max(len(r) for r in rows)))
    c, h, w = images.shape[1:]
    canvas = np.ones(((h + pad) * num_classes + pad, (w + pad) * cols + pad, 3), dtype=np.uint8) * 255
    for i, row in enumerate(rows):
        for j, img in enumerate(row[:cols]):
            a = (img.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0)
            if c == 1:
                a = np.repeat(a, 3, axis=2)
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = a[..., :3]
    im = Image.fromarray(canvas)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale > 1 else im


def save_png(image: Image.Image, path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def loss_plot(losses: list[float], width: int = 640, height: int = 360, title: str = "loss") -> Image.Image:
    """A line plot of ``losses`` against step (log scale when the values span more than a decade)."""
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 60, 15, 25, 30
    d.rectangle([left, top, width - right, height - bottom], outline="black")
    values = [v for v in losses if math.isfinite(v)]
    if not values:
        d.text((left + 10, top + 10), "no finite loss values", fill="black")
        return im
    lo, hi = min(values), max(values)
    log = lo > 0 and hi / lo > 10
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    flo, fhi = f(lo), f(hi)
    span = (fhi - flo) or 1.0
    n = max(1, len(losses) - 1)
    pts = [(left + (width - left - right) * i / n, height - bottom - (height - top - bottom) * (f(v) - flo) / span)
           for i, v in enumerate(losses) if math.isfinite(v)]
    if len(pts) > 1:
        d.line(pts, fill=(31, 119, 180), width=2)
    d.text((5, 5), f"{title}{' (log scale)' if log else ''}", fill="black")
    d.text((5, top), f"{hi:.3g}", fill="black")
    d.text((5, height - bottom - 10), f"{lo:.3g}", fill="black")
    d.text((left, height - bottom + 8), "step 1", fill="black")
    d.text((width - right - 80, height - bottom + 8), f"step {len(losses)}", fill="black")
    return im
