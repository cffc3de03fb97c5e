"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021), split into ``make_params`` and ``apply``.

``make_params(batch, generator)`` draws everything random (which op group, per-sample factors); ``apply(x,
params)`` is deterministic and differentiable in ``x`` and uses the first ``len(x)`` rows of the params, so the
params drawn for the larger of a real and a synthetic batch serve both: that is the siamese part.
Ops follow DSA's reference maths: scale and rotate by affine grids, crop = integer translation with zero
padding, cutout, horizontal flip, and the colour group (brightness, saturation, contrast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .registry import Registry

AUGMENTS: Registry = Registry("augmentation")
GROUPS = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}


@dataclass
class DSAConfig:
    strategy: str = "color_crop_cutout_flip_scale_rotate"
    mode: str = "single"  # "single": one op group drawn per call (DSA's 'S'); "all": every group in turn ('M')
    scale: float = 1.2
    rotate: float = 15.0  # degrees
    crop: float = 0.125
    cutout: float = 0.5
    flip: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


class Augment:
    def __init__(self, cfg: DSAConfig | None = None):
        self.cfg = cfg or DSAConfig()
        self.groups = [g for g in self.cfg.strategy.split("_") if g] if self.cfg.strategy not in ("", "none") else []
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown augmentation op(s) {unknown}; valid ops: {', '.join(GROUPS)}")
        if self.cfg.mode not in ("single", "all"):
            raise ValueError(f"unknown augmentation mode {self.cfg.mode!r}; use single or all")

    # -- randomness -------------------------------------------------------------------------------------
    def make_params(self, batch: int, generator: torch.Generator | None = None, device=None) -> dict:
        if not self.groups:
            return {"ops": []}
        if self.cfg.mode == "single":
            groups = [self.groups[int(torch.randint(len(self.groups), (1,), generator=generator))]]
        else:
            groups = list(self.groups)
        ops = [op for g in groups for op in GROUPS[g]]
        params: dict = {"ops": ops}
        for op in ops:
            size = (batch, 2) if op in ("scale", "crop", "cutout") else (batch,)
            params[op] = torch.rand(size, generator=generator).to(device or "cpu")
        return params

    # -- deterministic part ---------------------------------------------------------------------------------
    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        n = x.shape[0]
        for op in params["ops"]:
            u = params[op][:n]
            if len(u) < n:
                raise ValueError(f"augmentation params were drawn for {len(u)} samples, not {n}")
            x = getattr(self, f"_{op}")(x, u)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.make_params(x.shape[0], generator, x.device))

    # -- ops --------------------------------------------------------------------------------------------------
    def _affine(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def _scale(self, x, u):
        r = self.cfg.scale
        s = u * (r - 1.0 / r) + 1.0 / r
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
        return self._affine(x, theta)

    def _rotate(self, x, u):
        a = (u - 0.5) * 2 * self.cfg.rotate / 180 * math.pi
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(-a)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
        return self._affine(x, theta)

    def _flip(self, x, u):
        return torch.where((u < self.cfg.flip).view(-1, 1, 1, 1), x.flip(3), x)

    def _brightness(self, x, u):
        return x + (u.view(-1, 1, 1, 1).to(x.dtype) - 0.5) * self.cfg.brightness

    def _saturation(self, x, u):
        mean = x.mean(dim=1, keepdim=True)
        return (x - mean) * (u.view(-1, 1, 1, 1).to(x.dtype) * self.cfg.saturation) + mean

    def _contrast(self, x, u):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (u.view(-1, 1, 1, 1).to(x.dtype) + self.cfg.contrast) + mean

    def _crop(self, x, u):
        """Integer translation by up to ``crop * size`` pixels, zeros shifted in."""
        n, _, h, w = x.shape
        sh, sw = int(h * self.cfg.crop + 0.5), int(w * self.cfg.crop + 0.5)
        ty = (u[:, 0] * (2 * sh + 1)).long().clamp(max=2 * sh) - sh
        tx = (u[:, 1] * (2 * sw + 1)).long().clamp(max=2 * sw) - sw
        gb, gy, gx = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                    torch.arange(w, device=x.device), indexing="ij")
        gy = (gy + ty.view(-1, 1, 1) + 1).clamp(0, h + 1)
        gx = (gx + tx.view(-1, 1, 1) + 1).clamp(0, w + 1)
        padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
        return padded[gb, gy, gx].permute(0, 3, 1, 2).contiguous()

    def _cutout(self, x, u):
        """Zero a square of side ``cutout * size`` at a random centre."""
        n, _, h, w = x.shape
        ch, cw = int(h * self.cfg.cutout + 0.5), int(w * self.cfg.cutout + 0.5)
        oy = (u[:, 0] * (h + (1 - ch % 2))).long()
        ox = (u[:, 1] * (w + (1 - cw % 2))).long()
        ys = torch.arange(h, device=x.device).view(1, -1, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, -1)
        y0, x0 = (oy - ch // 2).view(-1, 1, 1), (ox - cw // 2).view(-1, 1, 1)
        inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
        return x * (~inside).unsqueeze(1).to(x.dtype)


@AUGMENTS.register("dsa")
def image_augment(cfg: DSAConfig | None = None) -> Augment:
    return Augment(cfg or DSAConfig())


@AUGMENTS.register("latent")
def latent_augment(cfg: DSAConfig | None = None) -> Augment:
    """For latent tensors: geometric ops only (crop/shift, flip, scale); colour jitter and cutout mean nothing there."""
    return Augment(cfg or DSAConfig(strategy="crop_flip_scale"))


@AUGMENTS.register("none")
def no_augment(cfg: DSAConfig | None = None) -> Augment:
    return Augment(replace(cfg or DSAConfig(), strategy="none"))


def get_augment(name: str, cfg: DSAConfig | None = None) -> Augment:
    return AUGMENTS.get(name)(cfg)


def list_augments() -> list[str]:
    return AUGMENTS.names()
