"""Backbones: images <-> latent codes. ``load_backbone("pixel" | DIR | hub id | shipped name)``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import BACKBONES, INFO_FILE, Backbone
from .pixel import PixelBackbone
from .vae import VAEBackbone

ASSETS = Path(os.environ.get("GENDISTILL_ASSETS", Path(__file__).resolve().parents[2] / "assets"))
DEFAULT_BACKBONE = "fashion-mnist-vae"
_CLASS_TO_KIND = {"AutoencoderKL": "vae"}


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
                raise ValueError(f"{source!r} holds a {name!r}; supported backbones: {', '.join(BACKBONES.names())} (AutoencoderKL directories for vae)")
        raise ValueError(f"{source!r} is not a backbone directory (no config.json); pass 'pixel', a diffusers VAE directory or a hub id")
    if path.suffix or source.startswith((".", "/")) or source.count("/") != 1:
        raise ValueError(f"unknown backbone {source!r}: not a directory, a hub id (owner/name) or one of {', '.join(BACKBONES.names() + shipped_backbones())}")
    return "vae"  # a hub id


def shipped_backbones() -> list[str]:
    root = ASSETS / "backbones"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def load_backbone(source: str = DEFAULT_BACKBONE, image_shape=None) -> Backbone:
    source = resolve_source(source)
    return BACKBONES.get(backbone_kind(source)).from_pretrained(source, image_shape=image_shape)


__all__ = ["Backbone", "PixelBackbone", "VAEBackbone", "BACKBONES", "load_backbone", "resolve_source", "DEFAULT_BACKBONE", "shipped_backbones"]
