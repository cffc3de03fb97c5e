"""A diffusers ``AutoencoderKL`` as backbone (LatentDD): any hub id or local directory.

The model owns its conventions: ``scaling_factor`` / ``shift_factor`` and the downsampling factor are read from
its config. Dataset images are adapted to the VAE (grey <-> RGB, size rounded up to a multiple of the
downsampling factor) and decoded images are adapted back, so a 1-channel 28x28 dataset can use a 3-channel
Stable Diffusion VAE. Encoding uses the posterior mean unless a generator is given to sample.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import first_line
from .base import BACKBONES, INFO_FILE, Backbone, read_config


def _adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot adapt {x.shape[1]}-channel images to a {channels}-channel VAE")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


@BACKBONES.register("vae")
class VAEBackbone(Backbone):
    kind = "vae"

    def __init__(self, vae, image_shape=None, source: str = "vae"):
        cfg = vae.config
        if image_shape is None:
            image_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        super().__init__(image_shape, source)
        self.vae = vae.eval().requires_grad_(False)
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        _, h, w = self.image_shape
        self.work_size = (math.ceil(h / self.factor) * self.factor, math.ceil(w / self.factor) * self.factor)
        self.scale = float(cfg.scaling_factor)
        self.shift = float(cfg.shift_factor or 0.0)

    @property
    def latent_shape(self):
        cfg = self.vae.config
        return (cfg.latent_channels, self.work_size[0] // self.factor, self.work_size[1] // self.factor)

    def scaling(self) -> dict:
        return {"scaling_factor": self.scale, "shift_factor": self.shift}

    def decoder_modules(self):
        return [m for m in (self.vae.post_quant_conv, self.vae.decoder) if m is not None]

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator
               | None = None) -> torch.Tensor:
        """Posterior means (or samples with ``generator``); ``labels`` are ignored (the VAE is unconditional)."""
        x = _resize(_adapt_channels(x, self.vae.config.in_channels), self.work_size)
        dist = self.vae.encode(x.to(self.vae.dtype) * 2 - 1).latent_dist
        z = dist.mean if generator is None else dist.sample(generator)
        return (z - self.shift) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode((z / self.scale + self.shift).to(self.vae.dtype)).sample
        x = _resize(x, self.image_shape[1:])
        return (_adapt_channels(x, self.image_shape[0]) + 1) / 2

    def save_pretrained(self, directory, extra: dict | None = None) -> None:
        self.vae.save_pretrained(str(directory))
        self.write_info(directory, {"kind": self.kind, "image_shape": list(self.image_shape), **(extra or {})})

    @classmethod
    def from_pretrained(cls, source: str, image_shape=None, **_):
        from diffusers import AutoencoderKL

        path = Path(source)
        subfolder = None
        if path.is_dir():
            if not (path / "config.json").exists() and (path / "vae" / "config.json").exists():
                subfolder = "vae"  # a Stable Diffusion pipeline directory
            cfg = read_config(path / (subfolder or "") / "config.json", source,
                              "a VAE backbone is a diffusers AutoencoderKL directory")
            if cfg.get("_class_name") != "AutoencoderKL":
                raise ValueError(f"{source!r} holds a {cfg.get('_class_name')!r}, not an AutoencoderKL; pass a "
                                 "VAE directory")
            info_file = path / INFO_FILE
            if image_shape is None and info_file.exists():
                image_shape = tuple(json.loads(info_file.read_text())["image_shape"])
        try:
            vae = AutoencoderKL.from_pretrained(source, subfolder=subfolder)
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"could not load AutoencoderKL from {source!r} ({first_line(e)}); pass a local diffusers "
                             "VAE directory") from None
        return cls(vae, image_shape=image_shape, source=source)
