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


def _check_value(name: str, value: Any, tp) -> Any:
    """``value`` for a field typed ``tp`` (int, float, str, bool, optionally ``| None``), or a ValueError; an int
    is taken for a float field and converted."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    base = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name}: null is not allowed (give a {getattr(base, '__name__', base)})")
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    checked = base in (int, float, str, bool)  # other field types (rare in recipe configs) are taken as given
    if checked and (not isinstance(value, base) or (base is int and isinstance(value, bool))):  # True is an int to Python
        hint = " (YAML reads 1e-5 as text: write 1.0e-5)" if base is float and isinstance(value, str) else ""
        raise ValueError(f"{name}: expected {base.__name__}, got {type(value).__name__} {value!r}{hint}")
    return value


def read_config_file(cls: type, path: str | Path) -> dict[str, Any]:
    """The values a YAML config file sets for the dataclass ``cls``: every key must be a field (``-`` or ``_``) and
    every value of the field's type. Raises FileNotFoundError or ValueError naming the file and what to fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config {str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"config {str(path)!r} must hold a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"config {str(path)!r} has unknown keys {unknown}; valid keys: {sorted(names)}")
    try:
        return {k: _check_value(k, v, hints[k]) for k, v in values.items()}
    except ValueError as e:
        raise ValueError(f"config {str(path)!r}: {e}") from None


def parse_config(cls: type[C], argv: list[str] | None = None, description: str | None = None) -> C:
    """Build ``cls`` from its defaults, ``--config FILE.yaml`` and ``--key value`` flags (``--flag`` alone = true)."""
    hints = typing.get_type_hints(cls)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="YAML file with any of the keys below (recipes/configs/ holds every reported run)")
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
        try:
            values.update(read_config_file(cls, args.config))
        except (FileNotFoundError, ValueError) as e:
            p.error(f"--config: {e}")
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT (only once the new backbone is complete)")
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
