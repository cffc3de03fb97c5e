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


PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (127, 127, 127)]


def line_plot(series: dict[str, list[tuple[float, float]]], title: str = "", xlabel: str = "", ylabel: str = "",
              logx: bool = False, width: int = 720, height: int = 440, dashed: tuple[str, ...] = ()) -> Image.Image:
    """Lines of (x, y) points, one per named series, with markers, a legend, and x ticks at the points' x values
    (log scale with ``logx``); the series named in ``dashed`` are drawn dashed."""
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 60, 170, 30, 45
    d.rectangle([left, top, width - right, height - bottom], outline="black")
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(y)]
    if not points:
        d.text((left + 10, top + 10), "no points", fill="black")
        return im
    fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    xs = sorted({x for x, _ in points})
    xlo, xhi = fx(xs[0]), fx(xs[-1])
    ylo, yhi = min(y for _, y in points), max(y for _, y in points)
    pad = (yhi - ylo) * 0.08 or 1.0
    ylo, yhi = ylo - pad, yhi + pad

    def to_px(x, y):
        u = (fx(x) - xlo) / ((xhi - xlo) or 1.0)
        v = (y - ylo) / (yhi - ylo)
        return left + 10 + u * (width - left - right - 20), height - bottom - v * (height - top - bottom)

    for x in xs:
        px, _ = to_px(x, ylo)
        d.line([(px, height - bottom), (px, height - bottom + 4)], fill="black")
        d.text((px - 8, height - bottom + 8), f"{x:g}", fill="black")
    for k in range(5):
        y = ylo + (yhi - ylo) * k / 4
        _, py = to_px(xs[0], y)
        d.line([(left - 4, py), (left, py)], fill="black")
        d.text((5, py - 6), f"{y:.1f}", fill="black")
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        px = [to_px(x, y) for x, y in sorted(pts) if math.isfinite(y)]
        for a, b in zip(px, px[1:]):
            if name in dashed:
                steps = max(1, int(math.dist(a, b) // 8))
                for s in range(0, steps, 2):
                    t0, t1 = s / steps, min(1.0, (s + 1) / steps)
                    d.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                            (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=colour, width=2)
            else:
                d.line([a, b], fill=colour, width=2)
        for x, y in px:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ly = top + 5 + 16 * i
        d.line([(width - right + 10, ly + 6), (width - right + 30, ly + 6)], fill=colour, width=3)
        d.text((width - right + 35, ly), name, fill="black")
    d.text((left, 8), title, fill="black")
    d.text(((left + width - right) // 2 - 30, height - 18), xlabel + (" (log scale)" if logx else ""), fill="black")
    d.text((5, top - 20), ylabel, fill="black")
    return im
