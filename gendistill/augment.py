"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021), split into ``make_params`` and ``apply``.

``make_params(batch, generator)`` draws everything random (which op group, per-sample factors, affine matrices,
flip masks, crop/cutout offsets) from ``generator`` only; ``apply(x, params)`` is deterministic and
differentiable in ``x`` and uses the first ``len(x)`` rows of the params, so the params drawn for the larger of a
real and a synthetic batch serve both: that is the siamese part.

Image ops follow DSA's reference maths (``DiffAugment`` in VICO-UoE/DatasetCondensation): scale and rotate by
affine grids (``align_corners=True``), crop = integer translation by up to ``crop * size`` pixels with zeros
shifted in, cutout of a ``cutout * size`` square, horizontal flip, and the colour group (brightness, saturation,
contrast). The latent variant keeps only geometric ops and replaces the integer crop by a sub-pixel translation
through the same affine machinery: one pixel of a 7x7 latent is a seventh of the image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .registry import Registry

AUGMENTS: Registry = Registry("augmentation")

# strategy token -> ops applied in turn. DSA's tokens, plus the colour ops one by one.
IMAGE_GROUPS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
    "brightness": ("brightness",),
    "saturation": ("saturation",),
    "contrast": ("contrast",),
}
# on latents "crop" is a sub-pixel translation; colour jitter and cutout have no meaning there
LATENT_GROUPS: dict[str, tuple[str, ...]] = {
    "crop": ("translate",),
    "translate": ("translate",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}


@dataclass
class DSAConfig:
    strategy: str = "color_crop_cutout_flip_scale_rotate"  # tokens separated by '_'; "none" or "" for identity
    mode: str = "single"  # "single": one token drawn per call (DSA's 'S'); "all": every token in turn ('M')
    scale: float = 1.2  # per-axis scale factor drawn in [1/scale, scale]
    rotate: float = 15.0  # degrees, drawn in [-rotate, rotate]
    crop: float = 0.125  # shift of up to crop * size (pixels on images, a fraction of the extent on latents)
    cutout: float = 0.5  # side of the zeroed square, as a fraction of the size
    flip: float = 0.5  # probability of a horizontal flip
    brightness: float = 1.0  # x + (u - 0.5) * brightness
    saturation: float = 2.0  # lerp with the channel mean, factor u * saturation
    contrast: float = 0.5  # lerp with the image mean, factor u + contrast (DSA's rand_contrast)


class Augment:
    """DSA-style augmentation: ``apply(x, make_params(len(x), generator, x.device))``, or just ``aug(x, generator)``."""

    def __init__(self, cfg: DSAConfig | None = None, groups: Mapping[str, tuple[str, ...]] | None = None):
        self.cfg = cfg or DSAConfig()
        self.valid = dict(IMAGE_GROUPS if groups is None else groups)
        strategy = self.cfg.strategy.strip().lower()
        self.tokens = [] if strategy in ("", "none") else [t for t in strategy.split("_") if t]
        unknown = [t for t in self.tokens if t not in self.valid]
        if unknown:
            raise ValueError(f"unknown augmentation op(s) {', '.join(map(repr, unknown))} in strategy "
                             f"{self.cfg.strategy!r}; valid ops: {', '.join(self.valid)} (join them with '_')")
        if self.cfg.mode not in ("single", "all"):
            raise ValueError(f"unknown augmentation mode {self.cfg.mode!r}; use 'single' (one op per call) or 'all'")

    def __repr__(self) -> str:
        return f"Augment(strategy={'_'.join(self.tokens) or 'none'!r}, mode={self.cfg.mode!r})"

    # -- randomness: everything is drawn here, on CPU, from ``generator`` -------------------------------------------
    def make_params(self, batch: int, generator: torch.Generator | None = None,
                    device=None) -> dict[str, torch.Tensor | str]:
        """Random draws for ``batch`` samples: ``params["ops"]`` names the ops ('_'-joined), one tensor per op."""
        if batch < 0:
            raise ValueError(f"batch must be >= 0, got {batch}")
        if not self.tokens:
            return {"ops": ""}
        if self.cfg.mode == "single":
            tokens = [self.tokens[int(torch.randint(len(self.tokens), (1,), generator=generator))]]
        else:
            tokens = self.tokens
        ops = [op for t in tokens for op in self.valid[t]]
        params: dict[str, torch.Tensor | str] = {"ops": "_".join(ops)}
        for op in ops:
            params[op] = getattr(self, f"_draw_{op}")(batch, generator).to(device or "cpu")
        return params

    def _draw_scale(self, n, g):
        r = self.cfg.scale
        s = torch.rand(n, 2, generator=g) * (r - 1.0 / r) + 1.0 / r
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
        return theta

    def _draw_rotate(self, n, g):
        a = (torch.rand(n, generator=g) - 0.5) * 2 * self.cfg.rotate / 180 * math.pi
        cos, sin = torch.cos(a), torch.sin(a)
        return torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1)

    def _draw_translate(self, n, g):
        # shift by up to ``crop`` of the image extent; affine_grid's coordinates span 2 across it
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = (torch.rand(n, 2, generator=g) * 2 - 1) * 2 * self.cfg.crop
        return theta

    def _draw_crop(self, n, g):  # uniforms, turned into integer shifts once the size is known
        return torch.rand(n, 2, generator=g)

    _draw_cutout = _draw_crop

    def _draw_flip(self, n, g):
        return torch.rand(n, generator=g) < self.cfg.flip

    def _draw_brightness(self, n, g):
        return (torch.rand(n, generator=g) - 0.5) * self.cfg.brightness

    def _draw_saturation(self, n, g):
        return torch.rand(n, generator=g) * self.cfg.saturation

    def _draw_contrast(self, n, g):
        return torch.rand(n, generator=g) + self.cfg.contrast

    # -- deterministic part --------------------------------------------------------------------------------------------
    def apply(self, x: torch.Tensor, params: Mapping[str, torch.Tensor | str]) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"augmentation expects (N, C, H, W) tensors, got shape {tuple(x.shape)}")
        n = x.shape[0]
        for op in filter(None, params["ops"].split("_")):
            p = params[op]
            if len(p) < n:
                raise ValueError(f"augmentation params were drawn for {len(p)} samples, not {n}: "
                                 f"draw them for the larger of the batches that share them")
            x = getattr(self, f"_{op}")(x, p[:n].to(x.device))
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.make_params(x.shape[0], generator, x.device))

    # -- ops: (x, per-sample params) -> x ------------------------------------------------------------------------------
    @staticmethod
    def _warp(x, theta):
        """Bilinear resampling through ``theta`` with zeros outside, in float32 whatever autocast says."""
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            grid = F.affine_grid(theta.to(dtype), list(x.shape), align_corners=True)
            return F.grid_sample(x.to(dtype), grid, align_corners=True).to(x.dtype)

    def _scale(self, x, theta):
        return self._warp(x, theta)

    _rotate = _translate = _scale

    def _flip(self, x, mask):
        return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)

    def _brightness(self, x, delta):
        return x + delta.view(-1, 1, 1, 1).to(x.dtype)

    def _saturation(self, x, factor):
        mean = x.mean(dim=1, keepdim=True)
        return (x - mean) * factor.view(-1, 1, 1, 1).to(x.dtype) + mean

    def _contrast(self, x, factor):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * factor.view(-1, 1, 1, 1).to(x.dtype) + mean

    def _crop(self, x, u):
        """Integer translation by up to ``round(crop * size)`` pixels, zeros shifted in (DSA's ``rand_crop``)."""
        n, _, h, w = x.shape
        sh, sw = int(h * self.cfg.crop + 0.5), int(w * self.cfg.crop + 0.5)
        ty = (u[:, 0] * (2 * sh + 1)).long().clamp(max=2 * sh) - sh
        tx = (u[:, 1] * (2 * sw + 1)).long().clamp(max=2 * sw) - sw
        # read row y + ty, column x + tx of the input padded by one zero; indices past the pad land on it
        rows = (torch.arange(h, device=x.device) + ty.view(-1, 1) + 1).clamp(0, h + 1)  # (n, h)
        cols = (torch.arange(w, device=x.device) + tx.view(-1, 1) + 1).clamp(0, w + 1)  # (n, w)
        padded = F.pad(x, [1, 1, 1, 1])
        b = torch.arange(n, device=x.device).view(-1, 1, 1)
        return padded.permute(0, 2, 3, 1)[b, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)

    def _cutout(self, x, u):
        """Zero a square of side ``round(cutout * size)`` centred at a random pixel (DSA's ``rand_cutout``)."""
        _, _, h, w = x.shape
        ch, cw = int(h * self.cfg.cutout + 0.5), int(w * self.cfg.cutout + 0.5)
        oy = (u[:, 0] * (h + 1 - ch % 2)).long().clamp(max=h - ch % 2)
        ox = (u[:, 1] * (w + 1 - cw % 2)).long().clamp(max=w - cw % 2)
        y0, x0 = (oy - ch // 2).view(-1, 1, 1), (ox - cw // 2).view(-1, 1, 1)
        ys = torch.arange(h, device=x.device).view(1, -1, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, -1)
        inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
        return x * (~inside).unsqueeze(1).to(x.dtype)


@AUGMENTS.register("dsa")
def image_augment(cfg: DSAConfig | None = None) -> Augment:
    """DSA's image augmentation; default strategy ``color_crop_cutout_flip_scale_rotate``, one op per call."""
    return Augment(cfg or DSAConfig(), IMAGE_GROUPS)


@AUGMENTS.register("latent")
def latent_augment(cfg: DSAConfig | None = None) -> Augment:
    """For latent tensors: geometric ops only (sub-pixel shift as ``crop``, flip, scale, rotate); default
    ``crop_flip_scale``."""
    return Augment(cfg or DSAConfig(strategy="crop_flip_scale"), LATENT_GROUPS)


@AUGMENTS.register("none")
def no_augment(cfg: DSAConfig | None = None) -> Augment:
    return Augment(replace(cfg or DSAConfig(), strategy="none"))


def resolve_augment(name: str, space: str, siamese: bool = True) -> str:
    """The augmentation ``name`` means in match ``space``: "auto" is DSA's image ops on images ("pixel") and the
    geometric latent variant on latents; with ``siamese=False`` (DC, which has no augmentation) "auto" is "none"."""
    if name != "auto":
        return name
    if not siamese:
        return "none"
    return "dsa" if space == "pixel" else "latent"


def get_augment(name: str, cfg: DSAConfig | None = None) -> Augment:
    return AUGMENTS.get(name)(cfg)


def list_augments() -> list[str]:
    return AUGMENTS.names()
