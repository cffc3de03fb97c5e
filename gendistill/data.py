"""Datasets behind a registry: images as uint8 tensors in memory, labels, class names, normalisation stats.

``fashion-mnist`` is embedded (Debian's ``dataset-fashion-mnist`` idx files); MNIST, CIFAR-10/100 come from
torchvision when the user has the files (``download=True`` fetches them), ``imagefolder`` reads DIR/train and
DIR/test.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import setting
from .errors import first_line
from .registry import Registry

DATASETS: Registry = Registry("dataset")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_ENV = "GENDISTILL_FASHION_MNIST_DIR"
FASHION_APT = "apt-get update && apt-get install -y dataset-fashion-mnist"
DOWNLOAD_ENV = "GENDISTILL_DOWNLOAD"  # 1: datasets may be downloaded (as --download)


@dataclass
class ImageDataset:
    """A labelled image split held in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def class_indices(self, c: int) -> torch.Tensor:
        if self._by_class is None:
            self._by_class = [torch.nonzero(self.labels == k).flatten() for k in range(self.num_classes)]
        return self._by_class[c]

    def float_images(self, index=None) -> torch.Tensor:
        """Images in [0, 1] as float32 (all of them, or those at ``index``)."""
        x = self.images if index is None else self.images[index]
        return x.float().div_(255.0)

    def sample_class(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices of ``n`` distinct random images of class ``c``."""
        idx = self.class_indices(c)
        if n > len(idx):
            raise ValueError(f"class {c} of {self.name}/{self.split} has {len(idx)} images, fewer than the {n} asked "
                             "for; lower --ipc")
        return idx[torch.randperm(len(idx), generator=generator)[:n]]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.split}|{tuple(self.images.shape)}|".encode())
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()

    def meta(self) -> dict:
        """The dataset record stored in every set file (``gendistill.dataset``)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": list(self.classes),
        }


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel, for images in [0, 1]."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def download_allowed(download: bool = False) -> bool:
    """Whether a dataset may be fetched from the network: ``--download`` or GENDISTILL_DOWNLOAD=1."""
    return bool(download) or os.environ.get(DOWNLOAD_ENV, "").lower() in ("1", "true", "yes", "on")


def list_datasets() -> list[str]:
    return DATASETS.names()


def get_dataset(name: str, split: str = "train", data_dir: str | None = None, download: bool = False) -> ImageDataset:
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    return DATASETS.get(name)(split=split, data_dir=data_dir, download=download)


@dataclass
class DataConfig:
    """Which dataset to read: the data settings of every config (recipes, trainers, the CLI's commands)."""

    dataset: str = setting("fashion-mnist", choices=list_datasets)
    data_dir: str | None = None  # imagefolder: DIR holding train/ and test/; torchvision datasets: their root
    download: bool = False  # torchvision datasets: fetch the files if they are missing


def load_split(cfg, split: str) -> ImageDataset:
    """The ``split`` of the dataset that ``cfg`` (a :class:`DataConfig`, a config subclassing it or parsed flags)
    names."""
    return get_dataset(cfg.dataset, split, getattr(cfg, "data_dir", None), getattr(cfg, "download", False))


# ----------------------------------------------------------------------------------------------- idx files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzipped), as in the MNIST distribution."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{str(path)!r} is not a readable idx file ({e}); reinstall the dataset "
                         f"({FASHION_APT})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte idx file (bad magic number); reinstall the dataset")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{str(path)!r} is truncated (short header); reinstall the dataset")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims))
    if len(data) - header != count:
        raise ValueError(f"{str(path)!r} is truncated: expected {count} bytes of data, found {len(data) - header}; "
                         "reinstall the dataset")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_fashion_dir(data_dir: str | None) -> Path:
    explicit = data_dir or os.environ.get(FASHION_ENV)
    if explicit:  # a path the user named is used or refused, never silently replaced by another copy
        d = Path(explicit)
        if any((d / f"train-images-idx3-ubyte{ext}").exists() for ext in (".gz", "")):
            return d
        how = "--data-dir" if data_dir else FASHION_ENV
        raise FileNotFoundError(f"Fashion-MNIST idx files not found in {explicit!r} ({how}); "
                                "point it at the folder with train-images-idx3-ubyte.gz, or install them with "
                                f"`{FASHION_APT}`")
    candidates = []
    if shutil.which("dpkg"):
        try:
            out = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True,
                                 timeout=30).stdout
            candidates += [Path(p).parent for p in out.splitlines() if p.endswith("train-images-idx3-ubyte.gz")]
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append(Path("/usr/share/datasets/fashion-mnist"))
    for c in candidates:
        if any((c / f"train-images-idx3-ubyte{ext}").exists() for ext in (".gz", "")):
            return c
    raise FileNotFoundError(f"Fashion-MNIST idx files not found; install them with `{FASHION_APT}` or set "
                            f"{FASHION_ENV}=DIR")


def _idx_file(d: Path, stem: str) -> Path:
    for ext in (".gz", ""):
        if (d / f"{stem}{ext}").exists():
            return d / f"{stem}{ext}"
    raise FileNotFoundError(f"{stem}(.gz) is missing from {str(d)!r}; reinstall the dataset ({FASHION_APT})")


def _fashion_torchvision(split: str, data_dir: str | None, download: bool, missing: FileNotFoundError) -> ImageDataset:
    """Fashion-MNIST through torchvision's reader (``ROOT/FashionMNIST/raw``) when Debian's package is absent: files
    already there, or fetched when the user allows the network (``--download`` / GENDISTILL_DOWNLOAD=1)."""
    import torchvision

    root = data_dir or os.path.join(os.path.expanduser("~"), ".cache", "gendistill", "data")
    allowed = download_allowed(download)
    try:
        ds = torchvision.datasets.FashionMNIST(root, train=split == "train", download=allowed)
    except RuntimeError as e:  # not there (torchvision: "Dataset not found. You can use download=True ...")
        if allowed:
            raise FileNotFoundError(f"Fashion-MNIST could not be downloaded into {root!r} ({str(e).splitlines()[0]}); "
                                    "check the network") from None
        raise FileNotFoundError(f"{str(missing).split('; ')[0]}; install Debian's package (`{FASHION_APT}`), or "
                                f"pass --download (or set {DOWNLOAD_ENV}=1) to fetch it with torchvision "
                                f"into {root!r}") from None
    except OSError as e:  # a failed download (no network)
        reason = str(e).splitlines()[0] if str(e) else ""
        raise FileNotFoundError(f"Fashion-MNIST could not be downloaded into {root!r} ({type(e).__name__}: {reason}); "
                                f"check the network, or install Debian's package (`{FASHION_APT}`)") from None
    return ImageDataset(
        name="fashion-mnist",
        split=split,
        images=torch.as_tensor(np.asarray(ds.data)).unsqueeze(1).contiguous().to(torch.uint8),
        labels=torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64),
        classes=list(FASHION_CLASSES),
        mean=(0.2860,),
        std=(0.3530,),
    )


@DATASETS.register("fashion-mnist")
def fashion_mnist(split: str, data_dir: str | None = None, download: bool = False) -> ImageDataset:
    """Debian's idx files (or ``--data-dir`` / GENDISTILL_FASHION_MNIST_DIR holding them); without them, torchvision's
    reader (``--data-dir`` as its root, default ~/.cache/gendistill/data), downloading only when allowed."""
    try:
        d = _find_fashion_dir(data_dir)
    except FileNotFoundError as e:
        if os.environ.get(FASHION_ENV) and not data_dir:
            raise  # the folder the user named is used or refused
        return _fashion_torchvision(split, data_dir, download, e)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(d, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(d, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split} idx files in {str(d)!r} disagree: images {images.shape}, labels "
                         f"{labels.shape}")
    if labels.max(initial=0) >= len(FASHION_CLASSES):
        raise ValueError(f"Fashion-MNIST {split} labels go up to {labels.max()}, expected 0..9; reinstall the dataset")
    return ImageDataset(
        name="fashion-mnist", split=split,
        images=torch.from_numpy(images).unsqueeze(1), labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(FASHION_CLASSES), mean=(0.2860,), std=(0.3530,),
    )


# -------------------------------------------------------------------------------------- torchvision sets


def _torchvision(cls_name: str, name: str, mean, std):
    def load(split: str, data_dir: str | None = None, download: bool = False) -> ImageDataset:
        import torchvision

        root = data_dir or os.path.join(os.path.expanduser("~"), ".cache", "gendistill", "data")
        try:
            ds = getattr(torchvision.datasets, cls_name)(root, train=split == "train",
                                                         download=download_allowed(download))
        except RuntimeError as e:
            raise FileNotFoundError(f"{name} not found under {root!r} ({first_line(e)}); "
                                    f"pass --data-dir DIR, or --download (or {DOWNLOAD_ENV}=1) to fetch it") from None
        data = torch.as_tensor(np.asarray(ds.data))
        images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
        return ImageDataset(
            name=name, split=split, images=images.contiguous().to(torch.uint8),
            labels=torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64),
            classes=list(ds.classes), mean=mean, std=std,
        )

    return load


DATASETS.register("mnist")(_torchvision("MNIST", "mnist", (0.1307,), (0.3081,)))
DATASETS.register("cifar10")(_torchvision("CIFAR10", "cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)))
DATASETS.register("cifar100")(_torchvision("CIFAR100", "cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))


# -------------------------------------------------------------------------------------------- imagefolder

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}  # one channel (+ alpha)
WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # 16-bit grey: 0..65535 scaled to 0..255
ALPHA_BACKGROUND = 255  # transparent pixels are composited on white (docs/formats.md, "Image files")


@contextlib.contextmanager
def open_image(path: Path):
    """``PIL.Image.open`` of an image file with every failure a ValueError naming the file: unreadable, truncated or
    not an image, or larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (refused before decoding: a decompression bomb)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL only warns up to twice the limit
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{str(path)!r} is refused: {first_line(e)} (more than PIL.Image.MAX_IMAGE_PIXELS = "
                         f"{Image.MAX_IMAGE_PIXELS:,}); resize it or remove it from the folder") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
        raise ValueError(f"{str(path)!r} is not a readable image ({first_line(e)}); replace it or remove it "
                         "from the folder") from None
    with im:
        yield im


def image_pixels(im, gray: bool) -> np.ndarray:
    """A PIL image as uint8 (H, W) when ``gray`` else (H, W, 3): 16-bit grey scaled (not clipped) to 8 bits, any
    transparency (alpha channel, LA, palette or tRNS) composited on ``ALPHA_BACKGROUND``, palettes expanded."""
    if im.mode in WIDE_MODES:
        a = np.asarray(im).astype(np.float64)
        if a.min() < 0 or a.max() > 65535:
            raise ValueError(f"a {im.mode} image with values in [{a.min():.0f}, {a.max():.0f}]: only 8- and 16-bit "
                             "images are read")
        a = np.rint(a * (255 / 65535)).astype(np.uint8)
        return a if gray else np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        raise ValueError("a floating-point image: only 8- and 16-bit images are read; convert it to 8-bit PNG")
    if im.mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in im.info:
        a = np.asarray(im.convert("LA" if gray else "RGBA"), dtype=np.float64)
        alpha = a[..., -1:] / 255.0
        a = np.rint(a[..., :-1] * alpha + ALPHA_BACKGROUND * (1 - alpha)).astype(np.uint8)
        return a[..., 0] if gray else a
    return np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)


@DATASETS.register("imagefolder")
def imagefolder(split: str, data_dir: str | None = None, download: bool = False) -> ImageDataset:
    """DIR/train/<class>/*.png and DIR/test/<class>/*.png; classes sorted by name, size of the first image.

    Grayscale when every image is, RGB otherwise; 16-bit images scaled to 8 bits, transparency composited on white,
    over-large images refused (docs/formats.md, "Image files"); normalisation statistics come from the train split.
    """
    from PIL import Image

    if not data_dir:
        raise ValueError("the imagefolder dataset needs --data-dir DIR (with DIR/train/<class>/ and DIR/test/<class>/)")
    root = Path(data_dir) / split
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} does not exist; an imagefolder dataset needs DIR/train/<class>/ and "
                                "DIR/test/<class>/")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    train_classes = sorted(p.name for p in (Path(data_dir) / "train").iterdir() if p.is_dir())
    if not classes or classes != train_classes:
        raise ValueError(f"{str(root)!r} must hold the same class folders as the train split ({len(train_classes)} "
                         f"found there, {len(classes)} here)")
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())
             if f.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise ValueError(f"no images found under {str(root)!r}")
    gray, size = True, None
    for f, _ in files:  # first pass: colour mode and the reference size, one file open at a time
        with open_image(f) as im:
            gray = gray and im.mode in GRAY_MODES
            size = size or im.size
    arrays = []
    for f, _ in files:
        with open_image(f) as im:
            try:
                a = image_pixels(im, gray)
            except (OSError, ValueError, SyntaxError, EOFError) as e:  # decoding happens here: truncated data, bad mode
                raise ValueError(f"{str(f)!r} is not a readable image ({first_line(e)}); replace it or remove it "
                                 "from the folder") from None
        if a.shape[1::-1] != size:
            a = np.asarray(Image.fromarray(a).resize(size, Image.BILINEAR), dtype=np.uint8)
        arrays.append(a[None] if gray else a.transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([c for _, c in files], dtype=torch.int64)
    stats_from = images if split == "train" else imagefolder("train", data_dir).images
    x = stats_from.float() / 255.0
    mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return ImageDataset(name="imagefolder", split=split, images=images, labels=labels, classes=classes, mean=mean,
                        std=std)
