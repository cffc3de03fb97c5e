"""Encode a dataset split once per backbone; latents stored per class as safetensors shards.

Layout: ``<root>/<dataset>-<split>-<sha16>/class_0000.safetensors ... + meta.json``, keyed by the backbone's
weight hash (``sha16``) and checked against the dataset's fingerprint. A shard that is missing, unreadable, disagrees
with ``meta.json`` or holds non-finite latents makes the cache stale: it is rebuilt with a message. A backbone whose
encodings are not finite is refused, and nothing is written. Written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .backbones import Backbone
from .data import ImageDataset
from .errors import first_line
from .io import atomic_dir, load_safetensors, save_safetensors

CACHE_FORMAT = "1"
CACHE_ENV = "GENDISTILL_CACHE"


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "gendistill" / "latents"))


@dataclass
class LatentSplit:
    """Latents of one split, grouped by class: ``latents`` (N, *latent_shape), ``labels`` (N,).

    ``space`` is "latent" for a backbone's latents and "pixel" when ``latents`` holds the images themselves (in [0, 1]):
    the real side of a pixel-space match, or the split of a backbone whose encode is too costly to cache
    (``cheap_encode`` False), from which initialisers encode only the samples they pick.
    """

    latents: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    space: str = "latent"

    def __post_init__(self):
        self._by_class = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]

    def class_indices(self, c: int) -> torch.Tensor:
        return self._by_class[c]

    def sample_class(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = self._by_class[c]
        if n > len(idx):
            raise ValueError(f"class {c} has {len(idx)} real samples, fewer than the {n} asked for; lower --ipc or "
                             "--batch-real")
        return idx[torch.randperm(len(idx), generator=generator)[:n]]


@torch.no_grad()
def encode_images(backbone: Backbone, dataset: ImageDataset, batch_size: int = 256, device=None,
                  desc: str = "encode") -> torch.Tensor:
    device = device or next(backbone.parameters(), torch.empty(0)).device
    out = []
    for i in tqdm(range(0, len(dataset), batch_size), desc=desc, dynamic_ncols=True, leave=False):
        x = dataset.float_images(slice(i, i + batch_size)).to(device)
        out.append(backbone.encode(x, labels=dataset.labels[i : i + batch_size]).float().cpu())
    return torch.cat(out) if out else torch.empty(0, *backbone.latent_shape)


def cache_dir(backbone: Backbone, dataset: ImageDataset, root: str | Path | None = None) -> Path:
    return Path(root or default_cache_root()) / f"{dataset.name}-{dataset.split}-{backbone.weights_sha256()[:16]}"


def _read(directory: Path, backbone: Backbone, dataset: ImageDataset, fingerprint: str) -> LatentSplit:
    """The cached split, or ValueError saying why it is stale."""
    meta_file = directory / "meta.json"
    if not meta_file.exists():
        raise ValueError("meta.json is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        raise ValueError("meta.json is not valid JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("counts"),
                                                    list) or len(meta["counts"]) != dataset.num_classes:
        raise ValueError("meta.json is malformed")
    expect = {"format": CACHE_FORMAT, "backbone_sha256": backbone.weights_sha256(), "dataset_fingerprint": fingerprint,
              "latent_shape": list(backbone.latent_shape), "num_classes": dataset.num_classes}
    for key, value in expect.items():
        if meta.get(key) != value:
            raise ValueError(f"{key} differs ({meta.get(key)!r} cached)")
    latents, labels = [], []
    for c in range(dataset.num_classes):
        tensors, _ = load_safetensors(directory / f"class_{c:04d}.safetensors")
        z = tensors.get("latents")
        if z is None or tuple(z.shape[1:]) != tuple(backbone.latent_shape) or len(z) != meta["counts"][c]:
            raise ValueError(f"shard of class {c} does not match meta.json")
        if not z.is_floating_point() or not torch.isfinite(z).all():
            raise ValueError(f"shard of class {c} holds "
                             f"{'non-float' if not z.is_floating_point() else 'NaN or infinite'} latents")
        latents.append(z)
        labels.append(torch.full((len(z),), c, dtype=torch.int64))
    return LatentSplit(torch.cat(latents), torch.cat(labels), dataset.num_classes)


def image_split(dataset: ImageDataset) -> LatentSplit:
    """The images of a split (in [0, 1]) as a ``LatentSplit`` of space "pixel"."""
    return LatentSplit(dataset.float_images(), dataset.labels.clone(), dataset.num_classes, space="pixel")


def real_split(backbone: Backbone, dataset: ImageDataset, root: str | Path | None = None, device=None,
               log=print) -> LatentSplit:
    """What initialisers draw from: the cached latents, or (``backbone.cheap_encode`` False) the images, of which an
    initialiser encodes only the samples it picks."""
    if not backbone.cheap_encode:
        return image_split(dataset)
    return cached_latents(backbone, dataset, root, device=device, log=log)


def cached_latents(backbone: Backbone, dataset: ImageDataset, root: str | Path | None = None, batch_size: int = 256,
                   device=None, log=print) -> LatentSplit:
    """Latents of ``dataset`` under ``backbone``: read from the cache, or encoded once and stored."""
    if not backbone.cheap_encode:
        raise ValueError(f"a {backbone.kind} backbone's encode ({backbone.kind} inversion) is too slow to "
                         f"cache the whole {dataset.name}/{dataset.split} split; match in pixel space "
                         "(--match-space pixel)")
    if backbone.kind == "pixel":  # latents are the images: nothing to cache
        return LatentSplit(dataset.float_images(), dataset.labels.clone(), dataset.num_classes)
    directory = cache_dir(backbone, dataset, root)
    fingerprint = dataset.fingerprint()
    if directory.exists():
        try:
            return _read(directory, backbone, dataset, fingerprint)
        except (ValueError, FileNotFoundError) as e:
            log(f"latent cache {directory} is stale ({first_line(e)}); re-encoding")
    else:
        log(f"encoding {dataset.name}/{dataset.split} with {backbone.kind} backbone {backbone.source} into {directory}")
    z = encode_images(backbone, dataset, batch_size, device, desc=f"encode {dataset.name}/{dataset.split}")
    bad = (~torch.isfinite(z.flatten(1))).any(1)
    if bad.any():
        raise ValueError(f"{backbone.kind} backbone {backbone.source!r} encodes {int(bad.sum())} of the {len(z)} "
                         f"{dataset.name}/{dataset.split} images (first: #{int(bad.nonzero()[0])}) to NaN or infinite "
                         "latents; check the backbone's weights (nothing was cached)")
    split = LatentSplit(z, dataset.labels.clone(), dataset.num_classes)
    with atomic_dir(directory) as tmp:
        counts = []
        for c in range(dataset.num_classes):
            idx = split.class_indices(c)
            counts.append(len(idx))
            save_safetensors({"latents": z[idx]}, tmp / f"class_{c:04d}.safetensors", {"class": str(c)})
        meta = {"format": CACHE_FORMAT, "backbone_sha256": backbone.weights_sha256(),
                "backbone_source": backbone.source, "dataset": dataset.name, "split": dataset.split,
                "dataset_fingerprint": fingerprint, "latent_shape": list(backbone.latent_shape),
                "num_classes": dataset.num_classes, "counts": counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    # the stored order is class-major: return it that way so a re-read gives the same tensors
    order = torch.cat([split.class_indices(c) for c in range(dataset.num_classes)])
    return LatentSplit(z[order], dataset.labels[order].clone(), dataset.num_classes)

