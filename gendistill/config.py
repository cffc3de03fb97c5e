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


def add_data_flags(p: argparse.ArgumentParser, default=None, dataset_help: str | None = None, choices: bool = True) -> None:
    """``--dataset``, ``--data-dir`` and ``--download``: the fields of :class:`~gendistill.data.DataConfig` as flags,
    with ``default``'s values (default: ``DataConfig()``; ``DataConfig(dataset=None)`` for "the one a file records");
    ``choices=False`` leaves an unknown name to the registry's one-line error."""
    from .data import DataConfig, list_datasets

    default = default if default is not None else DataConfig()
    p.add_argument("--dataset", default=default.dataset, choices=list_datasets() if choices else None, help=dataset_help)
    p.add_argument("--data-dir", default=default.data_dir, help="imagefolder: DIR holding train/ and test/; torchvision datasets: their root")
    p.add_argument("--download", action="store_true", default=default.download, help="torchvision datasets: fetch the files if missing")


def backbone_training_parser(cfg_cls: type, description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of a backbone trainer: the dataset, ``--output`` and one flag per field of ``cfg_cls``
    (a tuple field takes several values)."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flags(p)
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


# ------------------------------------------------------------------------------------- objective settings in configs

_PLAIN = (int, float, str, bool, tuple)


def objective_settings(objective) -> dict[str, tuple[Any, Any]]:
    """``name -> (type, default)`` of an objective's settings (a registered name or its class): the fields of its
    dataclass, or the keyword parameters of its ``__init__``, of plain types only (numbers, strings, booleans, tuples,
    optionally None); objects a recipe builds at run time (experts, a classifier, anchor latents) are not settings."""
    import inspect

    if isinstance(objective, str):
        from .objectives import OBJECTIVES

        objective = OBJECTIVES.get(objective)
    if dataclasses.is_dataclass(objective):
        hints = typing.get_type_hints(objective)
        found = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(objective) if f.init and f.default is not dataclasses.MISSING}
    else:
        hints = typing.get_type_hints(objective.__init__)
        found = {n: (hints.get(n, type(p.default)), p.default) for n, p in inspect.signature(objective.__init__).parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not inspect.Parameter.empty}
    return {n: (tp, d) for n, (tp, d) in found.items() if (typing.get_origin(_base_type(tp)) or _base_type(tp)) in _PLAIN}


def with_objective(base: type, *objectives, unset: bool = False, exclude: tuple[str, ...] = (), name: str | None = None) -> type:
    """``base`` (a config dataclass) plus a field for every setting of ``objectives`` it lacks, with the objective's
    own default, so each default lives in one place; a recipe subclasses the result and redeclares only the defaults
    it changes. ``unset=True``: every added field defaults to None, "the method's default" (for a recipe whose
    method, and so whose defaults, is picked at run time; :func:`objective_kwargs` then leaves them out). ``exclude``:
    settings the recipe decides itself (they get no field)."""
    have = {f.name for f in dataclasses.fields(base)} | set(exclude)
    added = []
    for objective in objectives:
        for field_name, (tp, default) in objective_settings(objective).items():
            if field_name in have:
                continue
            have.add(field_name)
            if unset:
                tp, default = tp | None, None
            added.append((field_name, tp, dataclasses.field(default=default)))
    label = "".join(o if isinstance(o, str) else o.__name__ for o in objectives).title().replace("-", "")
    return dataclasses.make_dataclass(name or f"{base.__name__}With{label}", added, bases=(base,))


def objective_kwargs(cfg, *objectives, drop_none: bool = False) -> dict[str, Any]:
    """The settings of ``objectives`` that ``cfg`` holds, by name, to build the objective from a recipe's config
    (``drop_none``: leave out None values, so the objective's own defaults apply)."""
    out = {}
    for objective in objectives:
        for field_name in objective_settings(objective):
            if hasattr(cfg, field_name) and not (drop_none and getattr(cfg, field_name) is None):
                out[field_name] = getattr(cfg, field_name)
    return out
