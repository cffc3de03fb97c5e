"""Training state on disk without pickle: tensors in safetensors, everything else in JSON.

A state dict (a module's, an optimiser's, an objective's, a generator state as a uint8 tensor, ...) is a tree of
dicts, lists and tuples whose leaves are tensors, numbers, strings, booleans or None. ``flatten`` pulls the tensors out
under dotted names and leaves a JSON skeleton that points at them; ``unflatten`` puts the tree back together. Nothing
read back is ever unpickled, so a shared or tampered checkpoint cannot run code: the worst it can do is fail to load,
with a one-line error naming the file.

Skeleton encoding: a tensor is ``{"__tensor__": name}``, a tuple ``{"__tuple__": [...]}``, a dict whose keys are not all
plain strings (an optimiser's integer parameter ids) ``{"__dict__": [[key, value], ...]}``; other dicts, lists and
scalars are themselves. Plain dict keys never start with ``__``, so the three markers cannot be confused with data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import first_line
from .io import load_safetensors, save_safetensors, write_json

FORMAT = 1
TENSOR, TUPLE, DICT = "__tensor__", "__tuple__", "__dict__"


def flatten(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """``(tensors, skeleton)``: the tensors of ``state`` by dotted path, and a JSON-able tree referring to them."""
    tensors: dict[str, torch.Tensor] = {}

    def name_for(path: str) -> str:
        name, n = path or "tensor", 1
        while name in tensors:  # {"a.b": x, "a": {"b": y}} would collide
            name, n = f"{path}#{n}", n + 1
        return name

    def walk(obj, path: str):
        if isinstance(obj, torch.Tensor):
            name = name_for(path)
            tensors[name] = obj.detach().cpu().clone().contiguous()  # clone: safetensors refuses shared storage
            return {TENSOR: name}
        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}  # JSON has no nan/inf
        if isinstance(obj, tuple):
            return {TUPLE: [walk(v, f"{path}.{i}".lstrip(".")) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}.{i}".lstrip(".")) for i, v in enumerate(obj)]
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: walk(v, f"{path}.{k}".lstrip(".")) for k, v in obj.items()}
            if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in obj):
                raise TypeError(f"cannot checkpoint a dict with keys {list(obj)[:3]} at {path or 'the top'!r}: keys must be str or int")
            return {DICT: [[k, walk(v, f"{path}.{k}".lstrip("."))] for k, v in obj.items()]}
        raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path or 'the top'!r}: only tensors, numbers, strings, "
                        "None, lists, tuples and dicts (a generator: pass generator.get_state())")

    return tensors, walk(state, "")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> Any:
    """The inverse of ``flatten``; a skeleton that does not match the tensors raises ``ValueError`` naming ``source``."""

    def bad(what: str):
        return ValueError(f"{source} is malformed ({what})")

    def build(node):
        if isinstance(node, dict):
            if TENSOR in node:
                name = node[TENSOR]
                if len(node) != 1 or not isinstance(name, str) or name not in tensors:
                    raise bad(f"refers to a tensor {name!r} that is not stored")
                return tensors[name]
            if TUPLE in node:
                if len(node) != 1 or not isinstance(node[TUPLE], list):
                    raise bad("a tuple that is not a list")
                return tuple(build(v) for v in node[TUPLE])
            if DICT in node:
                pairs = node[DICT]
                if len(node) != 1 or not isinstance(pairs, list) or not all(
                        isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int)) and not isinstance(p[0], bool) for p in pairs):
                    raise bad("a keyed dict that is not a list of [key, value] pairs")
                return {k: build(v) for k, v in pairs}
            if "__float__" in node:
                if len(node) != 1 or node["__float__"] not in ("nan", "inf", "-inf"):
                    raise bad("a float that is not nan or inf")
                return float(node["__float__"])
            if any(k.startswith("__") for k in node):
                raise bad(f"unknown marker among {sorted(node)[:3]}")
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, list):
            return [build(v) for v in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise bad(f"a value of type {type(node).__name__}")

    return build(skeleton)


def save_state(state: Any, directory: str | Path, name: str, meta: dict | None = None) -> None:
    """Write ``state`` as ``directory/name.safetensors`` + ``directory/name.json`` (each atomically, flushed to disk).

    ``meta`` (JSON-able) is stored beside the skeleton and returned by ``load_state``.
    """
    directory = Path(directory)
    tensors, skeleton = flatten(state)
    save_safetensors(tensors, directory / f"{name}.safetensors")
    write_json({"format": FORMAT, "meta": meta or {}, "state": skeleton}, directory / f"{name}.json")


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a missing, unreadable or malformed file raises a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not readable JSON ({first_line(e)})") from None


def load_state(directory: str | Path, name: str) -> tuple[Any, dict]:
    """``(state, meta)`` from ``save_state``'s two files; never unpickles anything."""
    directory = Path(directory)
    head = read_json(directory / f"{name}.json")
    if not isinstance(head, dict) or "state" not in head or not isinstance(head.get("meta", {}), dict):
        raise ValueError(f"{str(directory / f'{name}.json')!r} is not a gendistill checkpoint file")
    if head.get("format") != FORMAT:
        raise ValueError(f"{str(directory / f'{name}.json')!r} has checkpoint format {head.get('format')!r}; this gendistill reads {FORMAT}")
    tensors, _ = load_safetensors(directory / f"{name}.safetensors", fix=None)
    return unflatten(head["state"], tensors, source=str(directory / name)), head.get("meta", {})
