"""PNG outputs without a plotting dependency: image grids (one row per class, torchvision's ``make_grid``) and loss
curves (PIL). Files are written atomically (``save_png``), which torchvision's ``save_image`` does not do."""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw

from .io import atomic_path


def image_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int | None = None,
               pad: int = 2, scale: int = 2) -> Image.Image:
    """One row per class, up to ``per_class`` images each, on white (``torchvision.utils.make_grid``); ``images``
    (N, C, H, W) in [0, 1]; a class with fewer images leaves its row's remaining cells white."""
    from torchvision.utils import make_grid

    hard = labels.argmax(1) if labels.ndim == 2 else labels
    rows = [images[hard.to(images.device) == c] for c in range(num_classes)]
    cols = max(1, min(per_class or max(len(r) for r in rows), max(len(r) for r in rows)))
    cells = torch.ones(num_classes, cols, min(images.shape[1], 3), *images.shape[2:])
    for i, row in enumerate(rows):
        row = row[:cols, :3].detach().float().clamp(0, 1).cpu()
        cells[i, : len(row)] = row
    grid = make_grid(cells.flatten(0, 1), nrow=cols, padding=pad, pad_value=1.0)  # 1 channel is repeated to RGB
    im = Image.fromarray((grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
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
