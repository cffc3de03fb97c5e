"""Configs are data: a dataclass of defaults, optionally a YAML file (``--config``), then ``--key value`` overrides."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def _base_type(tp):
    """``int | None`` -> int; ``Optional[str]`` -> str."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _parse_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _none_or(cast):
    def parse(text: str):
        return None if str(text).lower() in ("none", "null", "") else cast(text)

    parse.__name__ = getattr(cast, "__name__", "value")
    return parse


def parse_config(cls: type[C], argv: list[str] | None = None, description: str | None = None) -> C:
    """Build ``cls`` from its defaults, ``--config FILE.yaml`` and ``--key value`` flags (``--flag`` alone = true)."""
    hints = typing.get_type_hints(cls)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file with any of the keys below")
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        flag = f"--{f.name.replace('_', '-')}"
        default = f.default if f.default is not dataclasses.MISSING else None
        if tp is bool:
            p.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=None, help=f"(default {default})")
        else:
            cast = tp if tp in (int, float, str) else str
            p.add_argument(flag, type=_none_or(cast), default=None, help=f"(default {default})")
    args = p.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            p.error(f"--config {args.config!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            p.error(f"--config {args.config!r} is not valid YAML ({str(e).splitlines()[0]})")
        if not isinstance(loaded, dict):
            p.error(f"--config {args.config!r} must hold a mapping of keys to values")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(k.replace("-", "_") for k in loaded) - names)
        if unknown:
            p.error(f"--config {args.config!r} has unknown keys {unknown}; valid keys: {sorted(names)}")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    return cls(**values)


def backbone_training_parser(cfg_cls: type, description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of a backbone trainer: the dataset, ``--output`` and one flag per field of ``cfg_cls``
    (a tuple field takes several values)."""
    from .data import list_datasets

    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=list_datasets())
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--output", required=True, help="directory to write (diffusers layout)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUTPUT.ckpt (written after every epoch)")
    for f in dataclasses.fields(cfg_cls):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, tuple):
            p.add_argument(flag, type=type(f.default[0]), nargs="+", default=list(f.default))
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    return p


def config_from_args(cfg_cls: type[C], args: argparse.Namespace) -> C:
    """The ``cfg_cls`` instance that ``backbone_training_parser``'s parsed flags describe (lists back to tuples)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cfg_cls)}
    return cfg_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
