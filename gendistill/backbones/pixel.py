"""Pixel space: the identity backbone. Latents are images in [0, 1]; classic DC/DM live here."""

from __future__ import annotations

import torch

from .base import BACKBONES, Backbone


@BACKBONES.register("pixel")
class PixelBackbone(Backbone):
    kind = "pixel"

    def __init__(self, image_shape, source: str = "pixel"):
        super().__init__(image_shape, source)

    @property
    def latent_shape(self):
        return self.image_shape

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def decode_vjp(self, z: torch.Tensor, grad_x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        return grad_x.reshape(z.shape).to(z.dtype)

    @classmethod
    def from_pretrained(cls, source: str, image_shape=None, **_):
        if image_shape is None:
            raise ValueError("the pixel backbone needs the dataset's image shape")
        return cls(image_shape)
