"""Backbones: images <-> latent codes, at run time (training them lives in :mod:`gendistill.training`).

One interface (:class:`Backbone`, ``base``) and one module per kind: ``pixel`` (identity), ``vae`` (a diffusers
AutoencoderKL), ``gan`` (a generator; ``gan_model`` holds the generator's network), ``diffusion`` (a UNet + DDIM).
``loading`` turns a name (``pixel``, a shipped asset, a directory or a hub id) into one:
``load_backbone("pixel" | DIR | hub id | shipped name, latent_space=None, options=None)``.
"""

from __future__ import annotations

from .base import BACKBONES, Backbone, effective_match_space
from .diffusion import DiffusionBackbone
from .gan import GANBackbone
from .loading import (
    ASSETS,
    DEFAULT_BACKBONE,
    backbone_kind,
    backbone_options,
    load_backbone,
    option_names,
    resolve_source,
    shipped_backbones,
)
from .pixel import PixelBackbone
from .vae import VAEBackbone

__all__ = ["Backbone", "effective_match_space", "PixelBackbone", "VAEBackbone", "GANBackbone", "DiffusionBackbone",
           "BACKBONES", "load_backbone", "backbone_kind", "backbone_options", "option_names", "resolve_source",
           "DEFAULT_BACKBONE", "shipped_backbones", "ASSETS"]
