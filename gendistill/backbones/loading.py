"""Loading a backbone by name: ``load_backbone("pixel" | DIR | hub id | shipped name, latent_space=None,
options=None)``, the kind of a directory, the shipped assets and the load-time options each kind takes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import diffusion, pixel, vae  # noqa: F401  (register the diffusion, pixel and vae kinds)
from .base import BACKBONES, INFO_FILE, Backbone
from .gan import GENERATOR_CLASS

ASSETS = Path(os.environ.get("GENDISTILL_ASSETS", Path(__file__).resolve().parents[1] / "assets"))  # package data
DEFAULT_BACKBONE = "fashion-mnist-vae"
_CLASS_TO_KIND = {"AutoencoderKL": "vae", GENERATOR_CLASS: "gan"}


def resolve_source(source: str, revision: str | None = None) -> str:
    """A shipped name (``fashion-mnist-vae``) becomes its directory under ``gendistill/assets/backbones``, a Hub id
    (``owner/name``, ``owner/name@revision``) its snapshot folder in the Hub cache (downloaded if needed and
    allowed)."""
    from ..hub import is_hub_id, resolve_hub_source

    source = str(source)
    shipped = ASSETS / "backbones" / source
    if not Path(source).exists() and shipped.is_dir():
        if revision:
            raise ValueError(f"{source!r} is a shipped backbone; a revision applies to Hub repos (owner/name)")
        return str(shipped)
    if is_hub_id(source):
        return resolve_hub_source(source, revision)
    if revision:
        raise ValueError(f"revision {revision!r} applies to Hub repos (owner/name); {source!r} is not one")
    return source


def backbone_kind(source: str) -> str:
    if source in BACKBONES:
        return source
    path = Path(source)
    if path.is_dir():
        info = path / INFO_FILE
        if info.exists():
            return json.loads(info.read_text()).get("kind", "vae")
        if (path / "unet").is_dir():  # a Stable Diffusion layout (unet/, text_encoder/, tokenizer/, vae/, scheduler/)
            return "diffusion"
        for cfg in (path / "config.json", path / "vae" / "config.json"):
            if cfg.exists():
                try:
                    name = json.loads(cfg.read_text()).get("_class_name")
                except json.JSONDecodeError:
                    raise ValueError(f"{str(cfg)!r} is not valid JSON; re-create the backbone directory") from None
                if name in _CLASS_TO_KIND:
                    return _CLASS_TO_KIND[name]
                raise ValueError(f"{source!r} holds a {name!r}; supported backbones: {', '.join(BACKBONES.names())} "
                                 "(AutoencoderKL directories for vae, ConditionalStyleGenerator ones for gan, "
                                 "a directory holding unet/ and scheduler/ for diffusion)")
        raise ValueError(f"{source!r} is not a backbone directory (no config.json); pass 'pixel', a diffusers VAE, "
                         "GAN or diffusion directory or a hub id")
    if path.suffix or source.startswith((".", "/")) or source.count("/") != 1:
        raise ValueError(f"unknown backbone {source!r}: not a directory, a hub id (owner/name) or one of "
                         f"{', '.join(BACKBONES.names() + shipped_backbones())}")
    return "vae"  # a hub id


def shipped_backbones() -> list[str]:
    root = ASSETS / "backbones"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def option_names() -> list[str]:
    """Every load-time option some backbone kind takes (diffusion: decode_steps, invert_to, guidance_scale,
    prompt_template)."""
    return sorted({name for kind in BACKBONES.names() for name in BACKBONES.get(kind).option_names})


def load_backbone(source: str = DEFAULT_BACKBONE, image_shape=None, latent_space: str | None = None,
                  options: dict | None = None, class_names=None, revision: str | None = None) -> Backbone:
    """The backbone at ``source``; ``latent_space`` picks one of a gan's spaces (z, w, w+, f<k>; None: its default);
    ``options`` are load-time settings of kinds that have them (None values: the backbone's defaults; any other for a
    kind without that option is an error); ``class_names`` are the dataset's (a text-conditioned model's prompts).
    ``source`` may be a Hub repo id of any kind (``owner/name``, pinned by ``revision`` or ``owner/name@revision``);
    the backbone gets its portable ``reference`` (``gendistill.hub``), which a set file records."""
    from ..hub import attach_reference

    given = source
    source = resolve_source(source, revision)
    kind = backbone_kind(source)
    cls = BACKBONES.get(kind)
    kwargs = {"image_shape": image_shape}
    for name, value in (options or {}).items():
        if value is None:
            continue
        if name not in cls.option_names:
            owners = [k for k in BACKBONES.names() if name in BACKBONES.get(k).option_names] or ["no"]
            raise ValueError(f"--{name.replace('_', '-')} applies to {' and '.join(owners)} backbones; "
                             f"{source!r} is a {kind} backbone (leave it unset)")
        kwargs[name] = value
    if class_names is not None:
        kwargs["class_names"] = list(class_names)
    if latent_space is not None:
        if not cls.has_latent_spaces:
            raise ValueError(f"--latent-space {latent_space!r} applies to gan backbones; "
                             f"{source!r} is a {kind} backbone with one latent space (leave --latent-space unset)")
        kwargs["latent_space"] = latent_space
    return attach_reference(cls.from_pretrained(source, **kwargs), given, source, revision)


def backbone_options(cfg) -> dict:
    """The load-time options a config (a recipe's dataclass or argparse namespace) sets, by name; unset ones are
    None."""
    return {name: getattr(cfg, name, None) for name in option_names()}

