"""Nested training state (state_dicts of modules, optimisers and lr schedulers, generator states, counters) to one
safetensors file and back, without pickle.

The tensors go into the file as tensors; everything else is JSON in the file's metadata, with each tensor replaced by
a reference to its name. Only tensors, dicts (string or int keys), lists, tuples, strings, numbers, booleans and None
are stored: anything else raises when saving, so loading never has to run code (a pickle payload planted in the file
is not a safetensors file and is refused as unreadable).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .io import load_safetensors, save_safetensors

STATE_KEY = "gendistill.state"


def _encode(obj, tensors: dict[str, torch.Tensor], path: str):
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()  # clone: no two saved tensors share storage
        return {"$tensor": name}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"state key {k!r} at {path or 'top level'} is a {type(k).__name__}; "
                                "only str and int keys are stored")
            items.append([k, _encode(v, tensors, f"{path}/{k}")])
        return {"$dict": items}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    raise TypeError(f"cannot store a {type(obj).__name__} at {path or 'top level'} of a training state without pickle; "
                    "store tensors, numbers, strings, lists, tuples, dicts and None only")


def _decode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"$tensor"}:
        if obj["$tensor"] not in tensors:
            raise ValueError(f"refers to a tensor {obj['$tensor']!r} the file does not hold")
        return tensors[obj["$tensor"]]
    if set(obj) == {"$float"} and obj["$float"] in ("inf", "-inf", "nan"):
        return float(obj["$float"])
    if set(obj) == {"$tuple"} and isinstance(obj["$tuple"], list):
        return tuple(_decode(v, tensors) for v in obj["$tuple"])
    if set(obj) == {"$dict"} and isinstance(obj["$dict"], list):
        out = {}
        for item in obj["$dict"]:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                raise ValueError("holds a malformed mapping")
            out[item[0]] = _decode(item[1], tensors)
        return out
    raise ValueError(f"holds an unknown JSON object with keys {sorted(obj)[:3]}")


def save_state(state, path: str | Path) -> None:
    """Write ``state`` (nested tensors and plain values) to ``path`` atomically, as safetensors + JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors, "")
    save_safetensors(tensors, path, {STATE_KEY: json.dumps(skeleton)})


def load_state(path: str | Path, what: str = "state file"):
    """The state :func:`save_state` wrote to ``path``; a file of any other kind (a pickle, truncated, empty, or
    not written by :func:`save_state`) raises ``ValueError`` with a one-line reason. Nothing in the file is executed."""
    try:
        tensors, meta = load_safetensors(path)
    except ValueError:
        raise ValueError(f"{str(path)!r} is not a readable {what} (not a safetensors file: truncated, empty or of "
                         "another kind)") from None
    if STATE_KEY not in meta:
        raise ValueError(f"{str(path)!r} is not a readable {what} (a safetensors file without {STATE_KEY!r})")
    try:
        return _decode(json.loads(meta[STATE_KEY]), tensors)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{str(path)!r} is not a readable {what} (its state {str(e).splitlines()[0]})") from None
