"""The package's face for notebooks: load a distilled set as a torch ``Dataset``, or make one, without a recipe file.

    import gendistill, torch
    ds = gendistill.load_set("owner/fmnist-dm-ipc10")   # a set file, a run directory or a Hub dataset repo
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=True)

    ds = gendistill.distill_set(method="dm", dataset="fashion-mnist", ipc=10, backbone="fashion-mnist-vae", steps=200,
                                output="outputs/my-dm")          # runs the same pipeline as `gendistill distill dm`
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .hub import SET_FILE, fetch_set, find_backbone, is_hub_id, split_revision


class DistilledSet(Dataset):
    """A distilled set as ``(image, label)`` pairs: images decoded by its backbone (once, on first use), normalised with
    the dataset's mean and std as the evaluation protocol feeds networks, or in [0, 1] with ``raw=True``.

    ``latents`` (N, *latent_shape) and ``labels`` ((N,) class ids or (N, K) soft labels) are the stored tensors,
    ``meta`` the file's records (``backbone``, ``dataset``, ``run``), ``backbone`` the loaded backbone (None for a
    decoded-images file), ``decode()`` the images in [0, 1], ``lr`` a learned eval lr (or None), ``path`` the file.
    """

    def __init__(self, path: Path, latents: torch.Tensor | None, labels: torch.Tensor, meta: dict, backbone=None,
                 raw: bool = False, images: torch.Tensor | None = None, lr: float | None = None, syn=None):
        self.path = Path(path)
        self.latents = latents
        self.labels = labels
        self.meta = meta
        self.backbone = backbone
        self.raw = raw
        self.lr = lr
        self.syn = syn  # the SyntheticSet (None for a decoded-images file)
        self._images = images
        self._normalised = None
        self.eval: dict | None = None  # distill_set's evaluation result, if it ran one

    # -- the data -----------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        d = self.meta.get("dataset", {})
        return list(d.get("classes") or [str(c) for c in range(self.num_classes)])

    @property
    def num_classes(self) -> int:
        d = self.meta.get("dataset", {})
        if d.get("num_classes"):
            return int(d["num_classes"])
        return self.labels.shape[1] if self.labels.ndim == 2 else int(self.labels.max()) + 1

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.labels.argmax(1) if self.labels.ndim == 2 else self.labels

    def decode(self, batch: int = 256) -> torch.Tensor:
        """The set's images (N, C, H, W) float32 in [0, 1], on the CPU (decoded once, then kept)."""
        if self._images is None:
            self._images = self.syn.decode(self.backbone, batch=batch).float().cpu()
        return self._images

    def images(self) -> torch.Tensor:
        """What ``__getitem__`` serves: decoded images, normalised unless ``raw``."""
        if self.raw:
            return self.decode()
        if self._normalised is None:
            from .data import normalize

            d = self.meta.get("dataset", {})
            if not d.get("mean") or not d.get("std"):
                raise ValueError(f"{str(self.path)!r} does not record its dataset's mean and std; load it "
                                 "with raw=True")
            self._normalised = normalize(self.decode(), d["mean"], d["std"])
        return self._normalised

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images()[i], self.labels[i]

    def __repr__(self) -> str:
        b = self.meta.get("backbone", {})
        return (f"DistilledSet({len(self)} images of {self.meta.get('dataset', {}).get('name')}, backbone "
                f"{b.get('source')} ({b.get('kind')}), {'raw [0, 1]' if self.raw else 'normalised'}, {self.path})")

    # -- other forms ------------------------------------------------------------------------------------------------
    def to_hf(self):
        """A ``datasets.Dataset`` with features ``image`` (Image) and ``label`` (ClassLabel with the class names), plus
        ``soft_label`` for soft-labelled sets (needs the ``hf`` extra: ``pip install 'gendistill[hf]'``)."""
        try:
            from datasets import ClassLabel, Features, Image, Sequence, Value
            from datasets import Dataset as HFDataset
        except ImportError:
            raise ImportError("exporting a Hugging Face dataset needs `datasets`: pip install "
                              "'gendistill[hf]'") from None
        import numpy as np

        x = (self.decode().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        images = [a[..., 0] if a.shape[2] == 1 else a for a in x]
        columns = {"image": images, "label": self.hard_labels.tolist()}
        features = {"image": Image(), "label": ClassLabel(names=self.classes)}
        if self.labels.ndim == 2:
            columns["soft_label"] = [np.asarray(r, dtype=np.float32) for r in self.labels.float().tolist()]
            features["soft_label"] = Sequence(Value("float32"))
        return HFDataset.from_dict(columns, features=Features(features))


def _set_path(path_or_repo, revision: str | None) -> Path:
    path = Path(path_or_repo)
    if path.exists():
        if path.is_dir():
            if not (path / SET_FILE).is_file():
                raise FileNotFoundError(f"{str(path)!r} holds no {SET_FILE}; pass a set file, a run directory or "
                                        "a Hub repo id")
            return path / SET_FILE
        return path
    if is_hub_id(str(path_or_repo)):
        repo, rev = split_revision(str(path_or_repo))
        return fetch_set(repo, revision or rev) / SET_FILE
    raise FileNotFoundError(f"{str(path_or_repo)!r} is neither a file, a directory nor a Hub dataset repo id "
                            "(owner/name); check it")


def load_set(path_or_repo, raw: bool = False, backbone: str | None = None, revision: str | None = None,
             ignore_hash: bool = False, device=None) -> DistilledSet:
    """A distilled set as a torch ``Dataset`` of decoded images.

    ``path_or_repo``: a set file, a run directory holding ``set.safetensors``, a decoded-images file (``gendistill
    export``) or a Hub dataset repo id (``owner/name``, ``@revision`` or ``revision=``; fetched into the Hub cache).
    The backbone is the one the set names (shipped, Hub, or a local folder found by name and hash) unless ``backbone``
    is given; its hash is checked (``ignore_hash`` to decode anyway). ``raw``: images in [0, 1] instead of normalised.
    ``device``: where to decode (default CPU); the images are kept on the CPU.
    """
    from .io import load_safetensors
    from .synthetic import SyntheticSet, read_metadata

    path = _set_path(path_or_repo, revision)
    tensors, meta = load_safetensors(path)
    records = read_metadata(path, meta)
    if meta.get("gendistill.decoded") == "1":
        if "images" not in tensors or "labels" not in tensors or len(tensors["images"]) != len(tensors["labels"]):
            raise ValueError(f"{str(path)!r} is marked decoded but lacks consistent 'images' and 'labels'; "
                             "re-export it")
        return DistilledSet(path, None, tensors["labels"], records, raw=raw, images=tensors["images"].float())
    syn = SyntheticSet.load(path)
    found = find_backbone(syn.backbone_meta, syn.dataset_meta, explicit=backbone, near=path, ignore_hash=ignore_hash)
    syn.check_backbone(found, ignore_hash)
    found.to(device or "cpu")
    lr = float(syn.lr.detach()) if syn.lr is not None else None
    return DistilledSet(path, syn.latents.detach(), syn.labels, records, backbone=found, raw=raw, lr=lr, syn=syn)


def distill_set(method: str = "dm", output: str | None = None, raw: bool = False, **settings) -> DistilledSet:
    """Distil a set with a method's recipe (the pipeline `gendistill distill METHOD` runs) and load the result.

    ``settings`` are the recipe's config fields (``dataset``, ``ipc``, ``backbone``, ``steps``, ``lr``, ``init``,
    ``match_space``, ``eval_runs`` ...; ``gendistill distill METHOD --help`` lists them); ``output`` is the run
    directory (default ``outputs/<run-name>``), where set.safetensors, grid.png, loss.png and eval.json are written.
    The returned set has ``.eval``: the evaluation result (None with ``eval_runs=0``).
    """
    from . import recipes
    from .pipeline import run_name

    cfg = recipes.make_config(method, output=output, **settings)
    if cfg.output is None:
        cfg.output = str(Path("outputs") / run_name(method, cfg))
    result = recipes.run(method, cfg)
    ds = load_set(Path(cfg.output) / SET_FILE, raw=raw)
    ds.eval = result
    return ds


__all__ = ["DistilledSet", "load_set", "distill_set"]
