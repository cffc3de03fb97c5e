"""Checks of what a set file (or a decoded-images file) holds, so that a damaged or hand-edited file is refused in one
line naming the file and the field, before anything trusts it: the types of the metadata records, the labels' dtype,
shape and range, and finite latents / images in range.

Every record is optional (older files and ``gendistill init`` write fewer fields); a field that is present must be
of its documented type (docs/formats.md).
"""

from __future__ import annotations

import numbers

import torch

FIX = "re-create the file (or restore it from where it came from)"


def _bad(path, field: str, problem: str) -> ValueError:
    return ValueError(f"{str(path)!r}: {field} {problem}; {FIX}")


def _shape(value) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                              for v in value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _numbers(value) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                                              and
                                                               float(v) == float(v) and abs(float(v)) != float("inf")
                                                              for v in value)


def _str_or_none(value) -> bool:
    return value is None or isinstance(value, str)


# field -> (test, what it must be); a field that is absent is not checked
RECORD_FIELDS = {
    "backbone": {
        "kind": (lambda v: isinstance(v, str), "a string"),
        "source": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        "sha256": (_str_or_none, "a string"),
        "latent_shape": (_shape, "a list of positive integers"),
        "image_shape": (lambda v: _shape(v) and len(v) == 3, "a list of 3 positive integers (channels, height, width)"),
        "latent_space": (_str_or_none, "a string or null"),
        "options": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    },
    "dataset": {
        "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        "num_classes": (_count, "a positive integer"),
        "image_shape": (lambda v: _shape(v) and len(v) == 3, "a list of 3 positive integers (channels, height, width)"),
        "mean": (_numbers, "a list of finite numbers"),
        "std": (lambda v: _numbers(v) and all(x > 0 for x in v), "a list of positive numbers"),
        "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of strings"),
    },
    "run": {
        "method": (lambda v: isinstance(v, str), "a string"),
        "ipc": (_count, "a positive integer"),
        "steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
        "config": (lambda v: isinstance(v, dict), "an object"),
    },
}


def check_records(path, records: dict) -> None:
    """The parsed ``gendistill.backbone`` / ``dataset`` / ``run`` records: each a JSON object whose known fields have
    their documented types, and which agree with each other (classes and channels)."""
    for key, fields in RECORD_FIELDS.items():
        record = records.get(key, {})
        if not isinstance(record, dict):
            raise _bad(path, f"metadata gendistill.{key}",
                       f"must be a JSON object, not {type(record).__name__} {json_preview(record)}")
        for name, (test, what) in fields.items():
            if name in record and not test(record[name]):
                raise _bad(path, f"metadata gendistill.{key}.{name}",
                           f"must be {what}, got {json_preview(record[name])}")
    d = records.get("dataset", {})
    if "classes" in d and "num_classes" in d and len(d["classes"]) != d["num_classes"]:
        raise _bad(path, "metadata gendistill.dataset.classes",
                   f"names {len(d['classes'])} classes but num_classes is {d['num_classes']}")
    channels = d["image_shape"][0] if "image_shape" in d else None
    for name in ("mean", "std"):
        if channels is not None and name in d and len(d[name]) != channels:
            raise _bad(path, f"metadata gendistill.dataset.{name}",
                       f"has {len(d[name])} values for {channels}-channel images")


def json_preview(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(path, name: str, t: torch.Tensor) -> None:
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise _bad(path, f"tensor {name!r}", f"holds {bad} NaN or infinite values of {t.numel()}")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def check_set_tensors(path, tensors: dict[str, torch.Tensor], records: dict, decoded: bool = False) -> None:
    """The tensors of a set file (``latents``) or a decoded-images file (``images``): present, floating point, finite
    (images within [0, 1]), one label per sample; hard labels integer class ids in [0, num_classes), soft labels
    non-negative (N, num_classes); an optional ``lr`` a single number."""
    name = "images" if decoded else "latents"
    what = "a decoded-images file" if decoded else "a gendistill set file"
    for key in (name, "labels"):
        if key not in tensors:
            raise ValueError(f"{str(path)!r} has no {key!r} tensor; it is not {what}")
    x, labels = tensors[name], tensors["labels"]
    if not x.is_floating_point() or x.ndim < 2 or len(x) == 0:
        raise _bad(path, f"tensor {name!r}", f"must be floating point (N, ...) with N >= 1, got {_dtype(x)} "
                                             f"{tuple(x.shape)}")
    _finite(path, name, x)
    dataset, backbone = records.get("dataset", {}), records.get("backbone", {})
    if decoded:
        if x.ndim != 4:
            raise _bad(path, "tensor 'images'", f"must be (N, C, H, W), got shape {tuple(x.shape)}")
        if "image_shape" in dataset and list(x.shape[1:]) != list(dataset["image_shape"]):
            raise _bad(path, "tensor 'images'",
                       f"has images of shape {tuple(x.shape[1:])} but the dataset record says "
                       f"{tuple(dataset['image_shape'])}")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise _bad(path, "tensor 'images'", f"must hold values in [0, 1], found [{low:.4g}, {high:.4g}]")
    elif "latent_shape" in backbone and list(x.shape[1:]) != list(backbone["latent_shape"]):
        raise ValueError(f"{str(path)!r}: latents of shape {tuple(x.shape[1:])} but the recorded backbone "
                         f"latent shape is {tuple(backbone['latent_shape'])}; {FIX}")
    if labels.ndim not in (1, 2) or len(labels) != len(x):
        raise ValueError(f"{str(path)!r}: {len(x)} {name} but labels of shape {tuple(labels.shape)}; the file is "
                         f"inconsistent, expected ({len(x)},) or ({len(x)}, classes); {FIX}")
    classes = dataset.get("num_classes")
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise _bad(path, "tensor 'labels'", f"of hard labels must be integer class ids, got {_dtype(labels)}")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (classes is not None and high >= classes):
            limit = f"[0, {classes})" if classes is not None else "non-negative"
            raise _bad(path, "tensor 'labels'", f"holds class ids from {low} to {high}, outside {limit}")
    else:
        if not labels.is_floating_point():
            raise _bad(path, "tensor 'labels'", "of soft labels (N, classes) must be floating point, got "
                                                f"{_dtype(labels)}")
        _finite(path, "labels", labels)
        if classes is not None and labels.shape[1] != classes:
            raise _bad(path, "tensor 'labels'", f"has {labels.shape[1]} soft-label columns for {classes} classes")
        if float(labels.min()) < 0:
            raise _bad(path, "tensor 'labels'", "of soft labels (probabilities) holds negative values")
    lr = tensors.get("lr")
    if lr is not None and (lr.numel() != 1 or not lr.is_floating_point()):
        raise _bad(path, "tensor 'lr'", f"must be a single floating-point number, got {_dtype(lr)} {tuple(lr.shape)}")
