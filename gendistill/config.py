"""Configs are data: a dataclass of defaults, optionally a YAML file (``--config``), then ``--key value`` overrides.

Every field is type-checked against its annotation and range-checked against the limits it declares once, with
``setting(default, min=..., above=..., max=..., choices=...)``; a config class that derives from :class:`Checked` is
checked whenever it is built (flags, YAML or code), so a bad value stops the run before any work, in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UsageError, first_line

C = TypeVar("C")
FLOAT32_MAX = 3.4028234663852886e38


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are exceptions (``UsageError``), printed as one line by ``cli.run_guarded`` (exit 2),
    instead of a usage block and ``exit()`` from inside the parser. Flags are never abbreviated: a typo such as
    ``--step 5`` is an error, not silently ``--steps 5``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------------------------- limits


def setting(default, *, min=None, max=None, above=None, choices=None, check=None, infinite=False, **field_kwargs):
    """A dataclass field that declares its limits: ``min``/``max`` inclusive bounds, ``above`` an exclusive lower
    bound, ``choices`` a tuple of names or a function returning them (a registry's ``names``), ``check`` a function
    that raises ValueError for a value it refuses (a registry's ``get``, for names it resolves beyond its list),
    ``infinite`` that an infinite number is a meaningful value (NaN never is). A tuple field's limits hold for each
    element. Checked by :func:`check_config`, :func:`parse_config` and :func:`flag_type`; :func:`with_objective`
    carries them over."""
    limits = {k: v for k, v in {"min": min, "max": max, "above": above, "choices": choices, "check": check}.items()
              if v is not None}
    if infinite:
        limits["infinite"] = True
    return dataclasses.field(default=default, metadata={"limits": limits}, **field_kwargs)


def limits_of(cls: type, name: str) -> dict:
    """The limits field ``name`` of dataclass ``cls`` declares; a subclass that only changes the default (``steps: int
    = 200``) keeps those of the class that declared them."""
    for base in cls.__mro__:
        f = getattr(base, "__dataclass_fields__", {}).get(name)
        if f is not None and "limits" in f.metadata:
            return f.metadata["limits"]
    return {}


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _base_type(tp):
    """``int | None`` -> int; ``Optional[str]`` -> str."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _describe(value) -> str:
    return f"{value!r} (a {type(value).__name__})" if isinstance(value, str) else repr(value)


def _problem(value, tp, limits: dict):
    """``(value, None)`` with ``value`` in the field's type (an int for a float field becomes a float, a list for a
    tuple field a tuple), or ``(value, what is wrong)``."""
    if value is None:
        return value, None if _optional(tp) else "must be set"
    base = _base_type(tp)
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            return value, f"must be a list of values, got {_describe(value)}"
        elem = typing.get_args(base)[0]
        out = []
        for v in value:
            v, bad = _problem(v, elem, limits)
            if bad:
                return value, f"has an element that {bad}"
            out.append(v)
        return tuple(out), None
    if base is bool:
        return value, None if isinstance(value, bool) else f"must be true or false, got {_describe(value)}"
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return value, f"must be an integer, got {_describe(value)}"
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"must be a number, got {_describe(value)}"
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not limits.get("infinite")):
            return value, f"must be a finite number, got {value}"
        # every such setting ends up in a float32 tensor or optimiser
        if math.isfinite(value) and abs(value) > FLOAT32_MAX:
            return value, f"must be within float32 range (magnitude at most {FLOAT32_MAX:.4g}), got {value:g}"
    elif base is str:
        if not isinstance(value, str):
            return value, f"must be a string, got {_describe(value)}"
    else:
        return value, None  # other annotations are not checked here
    if limits.get("check") is not None:
        try:
            limits["check"](value)
        except ValueError as e:
            return value, f"is not valid: {first_line(e)}"
    choices = limits.get("choices")
    if choices is not None:
        names = list(choices() if callable(choices) else choices)
        if value not in names:
            return value, f"must be one of {', '.join(map(str, names))}, got {value!r}"
    if "min" in limits and value < limits["min"]:
        return value, f"must be at least {limits['min']}, got {value}"
    if "above" in limits and not value > limits["above"]:
        return value, f"must be greater than {limits['above']}, got {value}"
    if "max" in limits and value > limits["max"]:
        return value, f"must be at most {limits['max']}, got {value}"
    return value, None


def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def check_value(cls: type, name: str, value, where: str | None = None):
    """``value`` for field ``name`` of ``cls`` in the field's type, or ValueError naming the flag (or ``where``)."""
    return check_limits(name, value, _hints(cls)[name], limits_of(cls, name), where)


def check_limits(name: str, value, tp, limits: dict, where: str | None = None):
    """``value`` of type ``tp`` within ``limits`` (as ``setting`` declares them), or ValueError naming ``--name``."""
    value, bad = _problem(value, tp, limits)
    if bad:
        raise ValueError(f"{where or flag(name)} {bad}")
    return value


def check_config(obj) -> None:
    """Check (and normalise: ints to floats, lists to tuples) every field of dataclass instance ``obj``."""
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, check_value(type(obj), f.name, getattr(obj, f.name)))


class Checked:
    """Mixin of config dataclasses: the fields are checked (:func:`check_config`) whenever one is built."""

    def __post_init__(self):
        check_config(self)


def checked_type(tp, **limits):
    """An argparse ``type`` that parses text as ``tp`` (int, float or str) and holds it to ``limits``."""
    cast = {int: int, float: float, str: str}[tp]

    def parse(text: str):
        value = cast(text)  # a ValueError here is argparse's "invalid int value: 'abc'"
        value, bad = _problem(value, tp, limits)
        if bad:
            raise argparse.ArgumentTypeError(bad)
        return value

    parse.__name__ = tp.__name__
    return parse


def flag_type(cls: type, name: str):
    """The argparse ``type`` of a flag that sets field ``name`` of config ``cls``: its type and declared limits."""
    return checked_type(_base_type(_hints(cls)[name]), **limits_of(cls, name))


# ----------------------------------------------------------------------------------------------- YAML and flags


class _YAMLLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where PyYAML has it
    """The safe loader, plus floats written without a dot (``lr: 1e-3``), which YAML 1.1 would read as strings."""


_YAMLLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                  list("-+0123456789."))


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


def read_config_file(cls: type, path: str | Path) -> dict[str, Any]:
    """The values of a ``--config`` YAML file for ``cls``: a mapping of known keys, each of the field's type and within
    its limits (ValueError in one line otherwise)."""
    file, path = Path(path), str(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config {path!r} does not exist" if not file.exists()
                                else f"--config {path!r} is not a file")
    try:
        loaded = yaml.load(file.read_text(), Loader=_YAMLLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path!r} is not valid YAML ({first_line(e)})") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path!r} must hold a mapping of keys to values, not a {type(loaded).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    keys = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(keys) - names)
    if unknown:
        raise ValueError(f"--config {path!r} has unknown keys {unknown}; valid keys: {sorted(names)}")
    return {k: check_value(cls, k, v, where=f"{k} in --config {path}") for k, v in keys.items()}


_CONFIG_PARSERS: dict[tuple, argparse.ArgumentParser] = {}


def _config_parser(cls: type, description: str | None) -> argparse.ArgumentParser:
    """The flags of :func:`parse_config` for ``cls``: built once per class and description, again when a registry
    has gained a name (a field's choices may come from one)."""
    from .registry import generation

    recipe = getattr(sys.modules.get(cls.__module__), "__file__", None)  # "latent_dm.py" in messages, also in-process
    if (cls, description, recipe, generation()) in _CONFIG_PARSERS:
        return _CONFIG_PARSERS[cls, description, recipe, generation()]
    hints = _hints(cls)
    p = ArgumentParser(prog=Path(recipe).name if recipe else None, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="YAML file with any of the keys below (recipes/configs/ holds every reported run)")
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if tp is bool:
            p.add_argument(flag(f.name), type=_parse_bool, nargs="?", const=True, default=argparse.SUPPRESS,
                           help=f"(default {default})")
        else:
            cast = flag_type(cls, f.name) if tp in (int, float, str) else str
            cast = _none_or(cast) if _optional(hints[f.name]) else cast  # "--latent-space none": the default
            # SUPPRESS: only the flags given are set, so "--ipc none" can clear a config file's value
            p.add_argument(flag(f.name), type=cast, default=argparse.SUPPRESS, help=f"(default {default})")
    if len(_CONFIG_PARSERS) >= 64:  # recipe modules loaded again and again (tests) make new classes: stay bounded
        _CONFIG_PARSERS.clear()
    _CONFIG_PARSERS[cls, description, recipe, generation()] = p  # building may have imported (registered) more
    return p


def parse_config(cls: type[C], argv: list[str] | None = None, description: str | None = None) -> C:
    """Build ``cls`` from its defaults, ``--config FILE.yaml`` and ``--key value`` flags (``--flag`` alone = true);
    every value is checked against the field's type and limits."""
    args = _config_parser(cls, description).parse_args(argv)
    values: dict[str, Any] = read_config_file(cls, args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k != "config"})  # a flag given as "none" overrides too
    return cls(**values)


def add_data_flags(p: argparse.ArgumentParser, default=None, dataset_help: str | None = None,
                   choices: bool = True) -> None:
    """``--dataset``, ``--data-dir`` and ``--download``: the fields of :class:`~gendistill.data.DataConfig` as flags,
    with ``default``'s values (default: ``DataConfig()``; ``DataConfig(dataset=None)`` for "the one a file records");
    ``choices=False`` leaves an unknown name to the registry's one-line error."""
    from .data import DataConfig, list_datasets

    default = default if default is not None else DataConfig()
    p.add_argument("--dataset", default=default.dataset, choices=list_datasets() if choices else None,
                   help=dataset_help)
    p.add_argument("--data-dir", default=default.data_dir,
                   help="imagefolder: DIR holding train/ and test/; torchvision datasets: their root")
    p.add_argument("--download", action="store_true", default=default.download,
                   help="torchvision datasets: fetch the files if missing")


def backbone_training_parser(cfg_cls: type, description: str | None = None, prog: str
                             | None = None) -> argparse.ArgumentParser:
    """The flags of a backbone trainer: the dataset, ``--output`` and one flag per field of ``cfg_cls`` (a tuple field
    takes several values), each typed and limited as the field declares."""
    p = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flags(p)
    p.add_argument("--output", required=True, help="directory to write (diffusers layout)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUTPUT.ckpt (written after every epoch)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUTPUT (only once the new backbone is complete)")
    hints = _hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        tp = _base_type(hints[f.name])
        if typing.get_origin(tp) is tuple:
            elem = checked_type(typing.get_args(tp)[0], **limits_of(cfg_cls, f.name))
            p.add_argument(flag(f.name), type=elem, nargs="+", default=list(f.default))
        else:
            p.add_argument(flag(f.name), type=flag_type(cfg_cls, f.name), default=f.default)
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
        found = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(objective) if f.init
                 and f.default is not dataclasses.MISSING}
    else:
        hints = typing.get_type_hints(objective.__init__)
        found = {n: (hints.get(n, type(p.default)), p.default)
                 for n, p in inspect.signature(objective.__init__).parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not inspect.Parameter.empty}
    return {n: (tp, d) for n, (tp, d) in found.items() if (typing.get_origin(_base_type(tp))
                                                           or _base_type(tp)) in _PLAIN}


def objective_limits(objective, name: str) -> dict:
    """The limits an objective declares for its setting ``name``: its dataclass field's (``setting``), or for an
    objective configured through ``__init__`` its ``limits`` class attribute (``{name: {"min": 0}}``)."""
    if isinstance(objective, str):
        from .objectives import OBJECTIVES

        objective = OBJECTIVES.get(objective)
    if dataclasses.is_dataclass(objective):
        return limits_of(objective, name)
    return dict(getattr(objective, "limits", {}).get(name, {}))


def with_objective(base: type, *objectives, unset: bool = False, exclude: tuple[str, ...] = (), name: str
                   | None = None) -> type:
    """``base`` (a config dataclass) plus a field for every setting of ``objectives`` it lacks, with the objective's
    own default, so each default lives in one place; a recipe subclasses the result and redeclares only the defaults
    it changes. ``unset=True``: every added field defaults to None, "the method's default" (for a recipe whose
    method, and so whose defaults, is picked at run time; :func:`objective_kwargs` then leaves them out). ``exclude``:
    settings the recipe decides itself (they get no field). The objective's limits come along (checked at parse
    time)."""
    have = {f.name for f in dataclasses.fields(base)} | set(exclude)
    added = []
    for objective in objectives:
        for field_name, (tp, default) in objective_settings(objective).items():
            if field_name in have:
                continue
            have.add(field_name)
            if unset:
                tp, default = tp | None, None
            limits = objective_limits(objective, field_name)
            added.append((field_name, tp, dataclasses.field(default=default, metadata={"limits": limits})))
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
