"""Making backbones (training apart from inference, as diffusers keeps its training loops out of the models).

``vae`` trains a small AutoencoderKL, ``gan`` the class-conditional style generator with its projection discriminator,
``diffusion`` a class-conditional latent diffusion UNet on a VAE's cached latents; ``common`` holds what they share
(EMA, per-epoch checkpoints and ``--resume``, saving the result); ``base`` the registry and the entry point
:func:`train_backbone` that ``recipes/train_*.py`` and ``gendistill train-backbone`` call.
"""

from __future__ import annotations

from . import diffusion, gan, vae  # noqa: F401  (register the "diffusion", "gan" and "vae" trainers)
from .base import TRAINERS, Trainer, get_trainer, train_backbone
from .common import EpochCheckpoint, checkpoint_path, ema_update

__all__ = ["TRAINERS", "Trainer", "get_trainer", "train_backbone", "EpochCheckpoint", "checkpoint_path", "ema_update"]
