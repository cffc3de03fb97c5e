"""Backbones: images <-> latent codes. ``load_backbone("pixel" | DIR | hub id | shipped name, latent_space=None)``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import BACKBONES, INFO_FILE, Backbone
from .gan import GENERATOR_CLASS, GANBackbone
from .pixel import PixelBackbone
from .vae import VAEBackbone

ASSETS = Path(os.environ.get("GENDISTILL_ASSETS", Path(__file__).resolve().parents[2] / "assets"))
DEFAULT_BACKBONE = "fashion-mnist-vae"
_CLASS_TO_KIND = {"AutoencoderKL": "vae", GENERATOR_CLASS: "gan"}


def resolve_source(source: str) -> str:
    """A shipped name (``fashion-mnist-vae``) becomes its directory under ``assets/backbones``."""
    shipped = ASSETS / "backbones" / source
    if not Path(source).exists() and shipped.is_dir():
        return str(shipped)
    return source


def backbone_kind(source: str) -> str:
    if source in BACKBONES:
        return source
    path = Path(source)
    if path.is_dir():
        info = path / INFO_FILE
        if info.exists():
            return json.loads(info.read_text()).get("kind", "vae")
        for cfg in (path / "config.json", path / "vae" / "config.json"):
            if cfg.exists():
                try:
                    name = json.loads(cfg.read_text()).get("_class_name")
                except json.JSONDecodeError:
                    raise ValueError(f"{str(cfg)!r} is not valid JSON; re-create the backbone directory") from None
                if name in _CLASS_TO_KIND:
                    return _CLASS_TO_KIND[name]
                raise ValueError(f"{source!r} holds a {name!r}; supported backbones: {', '.join(BACKBONES.names())} "
                                 "(AutoencoderKL directories for vae, ConditionalStyleGenerator ones for gan)")
        raise ValueError(f"{source!r} is not a backbone directory (no config.json); pass 'pixel', a diffusers VAE or GAN directory or a hub id")
    if path.suffix or source.startswith((".", "/")) or source.count("/") != 1:
        raise ValueError(f"unknown backbone {source!r}: not a directory, a hub id (owner/name) or one of {', '.join(BACKBONES.names() + shipped_backbones())}")
    return "vae"  # a hub id


def shipped_backbones() -> list[str]:
    root = ASSETS / "backbones"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def load_backbone(source: str = DEFAULT_BACKBONE, image_shape=None, latent_space: str | None = None) -> Backbone:
    """The backbone at ``source``; ``latent_space`` picks one of a gan's spaces (z, w, w+, f<k>; None: its default)."""
    source = resolve_source(source)
    kind = backbone_kind(source)
    cls = BACKBONES.get(kind)
    if latent_space is None:
        return cls.from_pretrained(source, image_shape=image_shape)
    if not cls.has_latent_spaces:
        raise ValueError(f"--latent-space {latent_space!r} applies to gan backbones; {source!r} is a {kind} backbone with one latent space (leave --latent-space unset)")
    return cls.from_pretrained(source, image_shape=image_shape, latent_space=latent_space)


__all__ = ["Backbone", "PixelBackbone", "VAEBackbone", "GANBackbone", "BACKBONES", "load_backbone", "resolve_source", "DEFAULT_BACKBONE", "shipped_backbones"]
