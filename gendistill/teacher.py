"""Networks trained on real data: the teacher of soft-label relabelling, the scorer of forgetting events (coreset
selection) and the network behind a set's training dynamics (YOCO's LBPE score).

``train_net`` trains one fresh registered network on images with the evaluation protocol's optimiser (SGD, momentum
0.9, weight decay 5e-4, lr x0.1 at half the epochs) and, with ``track=True``, records each sample's training dynamics
at every presentation: whether the minibatch forward pass (before the update) classified it correctly, counted into
forgetting events (Toneva et al., ICLR 2019: a correct -> incorrect transition between two consecutive
presentations), and a per-epoch record of its softmax output (``probs``), which the LBPE score reads.

A teacher is a directory with ``teacher.safetensors`` (weights) and ``teacher.json`` (the network, the training
settings, the dataset record, the weights' sha256 and measured accuracies); nothing is pickled, and loading checks the
hash, so a damaged or swapped file is a one-line error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import get_augment
from .config import Checked, setting
from .data import ImageDataset, normalize
from .io import atomic_dir, load_safetensors, tensor_sha256
from .nets import NetConfig, fresh_net, get_builder

TEACHER_FORMAT = "1"
WEIGHTS, CONFIG = "teacher.safetensors", "teacher.json"
SRE2L_CONFIG = "config.json"  # the teacher folder recipes/sre2l.py writes (gendistill.sre2l): also read here


@dataclass
class NetTraining(Checked):
    """How a network is trained on real (or synthetic) images (each limit checked when built, and by the flags)."""

    arch: str = setting("convnet", check=get_builder)
    width: int = setting(128, min=1)
    depth: int = setting(3, min=1)
    epochs: int = setting(5, min=1)
    lr: float = setting(0.01, above=0)
    momentum: float = setting(0.9, min=0, max=1)
    weight_decay: float = setting(5e-4, min=0)
    batch: int = setting(256, min=1)
    augment: str = setting("none", choices=("none", "dsa"))
    seed: int = setting(0, min=0)

    def net_overrides(self) -> dict:
        """The NetConfig fields that differ from the defaults (the zoo's nets refuse a non-default depth)."""
        default = NetConfig()
        return {k: getattr(self, k) for k in ("width", "depth") if getattr(self, k) != getattr(default, k)}


@dataclass
class Dynamics:
    """Per-sample training dynamics over the presentations of a training run (rows as the training images)."""

    forgetting: torch.Tensor  # (N,) int64: correct -> incorrect transitions between consecutive presentations
    learned: torch.Tensor  # (N,) bool: classified correctly at least once
    probs: torch.Tensor  # (epochs, N, K) float32: the softmax output at each epoch's presentation
    epoch_accuracy: torch.Tensor  # (epochs,) float: fraction of presentations classified correctly, per epoch

    def forgetting_scores(self) -> torch.Tensor:
        """Toneva et al.'s score: the number of forgetting events, infinite for a sample never learned."""
        scores = self.forgetting.double()
        scores[~self.learned] = math.inf
        return scores


def train_net(images: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor, labels: torch.Tensor, in_shape,
              num_classes: int, mean, std, cfg: NetTraining, device=None, track: bool = False, progress: bool = True,
              desc: str = "train") -> tuple[torch.nn.Module, Dynamics | None]:
    """A fresh ``cfg.arch`` trained on ``images`` (a tensor (N, C, H, W) in [0, 1], or ``f(indices) -> images``) with
    ``labels`` (N,) hard ids or (N, K) probabilities; with ``track``, its :class:`Dynamics` too."""
    device = device or torch.device("cpu")
    n = len(labels)
    if n == 0:
        raise ValueError("no training images")
    fetch = (lambda b: images[b]) if torch.is_tensor(images) else images
    g = torch.Generator().manual_seed(cfg.seed)
    net = fresh_net(cfg.arch, tuple(in_shape), num_classes, g, **cfg.net_overrides()).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[max(1, cfg.epochs // 2)], gamma=0.1)
    augment = get_augment(cfg.augment)
    hard = labels.argmax(1) if labels.ndim == 2 else labels
    if track:
        forgetting = torch.zeros(n, dtype=torch.int64)
        learned = torch.zeros(n, dtype=torch.bool)
        last = torch.zeros(n, dtype=torch.bool)
        probs = torch.zeros(cfg.epochs, n, num_classes)
        accuracy = torch.zeros(cfg.epochs)
    steps = cfg.epochs * ((n + cfg.batch - 1) // cfg.batch)
    bar = tqdm(total=steps, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    net.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, cfg.batch):
            b = order[i : i + cfg.batch]
            x = augment(normalize(fetch(b).float().to(device), mean, std), g)
            y = labels[b].to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, y.float() if y.ndim == 2 else y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if track:
                with torch.no_grad():
                    p = logits.detach().float().softmax(1).cpu()
                now = p.argmax(1) == hard[b]
                forgetting[b] += (last[b] & ~now).long()
                learned[b] |= now
                last[b] = now
                probs[epoch, b] = p
                accuracy[epoch] += now.sum()
            bar.update(1)
        sched.step()
    bar.close()
    net.eval()
    if not track:
        return net, None
    return net, Dynamics(forgetting, learned, probs, accuracy / n)


@torch.no_grad()
def predict_probs(net: torch.nn.Module, images: torch.Tensor, mean, std, device=None, batch: int = 500,
                  temperature: float = 1.0) -> torch.Tensor:
    """softmax(net(x) / temperature) for images (N, C, H, W) in [0, 1]: (N, K) float32 on the CPU."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    device = device or torch.device("cpu")
    net.eval()
    out = [(net(normalize(images[i : i + batch].float().to(device), mean, std)).float() / temperature).softmax(1).cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.no_grad()
def embed(net: torch.nn.Module, images: torch.Tensor, mean, std, device=None, batch: int = 500) -> torch.Tensor:
    """The network's flattened features (``net.embed``) of images in [0, 1], on the CPU."""
    device = device or torch.device("cpu")
    net.eval()
    return torch.cat([net.embed(normalize(images[i : i + batch].float().to(device), mean, std)).float().cpu()
                      for i in range(0, len(images), batch)])


# ------------------------------------------------------------------------------------------------ teachers


@dataclass
class Teacher:
    net: torch.nn.Module
    training: NetTraining | dict  # a dict: an SRe2L teacher's own training record (gendistill.sre2l.TeacherConfig)
    dataset: dict  # the ``gendistill.dataset`` record of the data it was trained on
    sha256: str
    source: str
    measured: dict

    def probs(self, images: torch.Tensor, device=None, temperature: float = 1.0) -> torch.Tensor:
        return predict_probs(self.net, images, self.dataset["mean"], self.dataset["std"], device,
                             temperature=temperature)

    def record(self) -> dict:
        """What a relabelled set records about its teacher (portable: the directory's name, not its path)."""
        training = self.training if isinstance(self.training, dict) else asdict(self.training)
        return {"source": Path(self.source).name, "sha256": self.sha256, "training": training,
                "dataset": self.dataset.get("name"), "measured": self.measured}


def _weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def train_teacher(train: ImageDataset, cfg: NetTraining, device=None, test: ImageDataset | None = None,
                  progress: bool = True) -> Teacher:
    """A teacher trained on the whole train split (tested on ``test`` when given, recorded in ``measured``)."""
    from .evaluate import test_accuracy

    net, _ = train_net(lambda b: train.float_images(b), train.labels, train.image_shape, train.num_classes, train.mean,
                       train.std, cfg, device, progress=progress, desc="teacher")
    measured = {}
    if test is not None:
        measured["test_accuracy"] = test_accuracy(net, test, train.mean, train.std, device or torch.device("cpu"))
    return Teacher(net, cfg, train.meta(), tensor_sha256(_weights(net)), "", measured)


def save_teacher(teacher: Teacher, directory: str | Path) -> None:
    """Write ``directory`` (``teacher.safetensors`` + ``teacher.json``) atomically."""
    from safetensors.torch import save_file

    from .io import check_parent

    check_parent(directory)
    weights = _weights(teacher.net)
    info = {"format": TEACHER_FORMAT, "training": asdict(teacher.training), "dataset": teacher.dataset,
            "in_shape": list(teacher.dataset["image_shape"]), "num_classes": int(teacher.dataset["num_classes"]),
            "sha256": tensor_sha256(weights), "measured": teacher.measured}
    with atomic_dir(directory) as tmp:
        save_file(weights, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    teacher.source, teacher.sha256 = str(directory), info["sha256"]


def load_teacher(directory: str | Path, device=None) -> Teacher:
    """The teacher saved in ``directory``; a missing, damaged or altered one raises a one-line error."""
    d = Path(directory)
    hint = f"train one with `gendistill relabel --train-teacher --teacher {d}`"
    if not (d / CONFIG).is_file() and (d / SRE2L_CONFIG).is_file():
        return _sre2l_teacher(d, device, hint)
    if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
        raise FileNotFoundError(f"no teacher in {str(d)!r} (it needs {CONFIG} and {WEIGHTS}); {hint}")
    try:
        info = json.loads((d / CONFIG).read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{str(d / CONFIG)!r} is not valid JSON; {hint}") from None
    if not isinstance(info, dict) or info.get("format") != TEACHER_FORMAT:
        raise ValueError(f"{str(d / CONFIG)!r} is not a gendistill teacher (format {TEACHER_FORMAT}); {hint}")
    try:
        names = {f.name for f in fields(NetTraining)}
        training = NetTraining(**{k: v for k, v in info["training"].items() if k in names})
        dataset, in_shape, classes = info["dataset"], tuple(info["in_shape"]), int(info["num_classes"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{str(d / CONFIG)!r} is incomplete ({type(e).__name__}: {e}); {hint}") from None
    weights, _ = load_safetensors(d / WEIGHTS)
    if tensor_sha256(weights) != info.get("sha256"):
        raise ValueError(f"{str(d / WEIGHTS)!r} does not have the sha256 recorded in {CONFIG}; the file was altered or "
                         f"damaged, {hint}")
    net = fresh_net(training.arch, in_shape, classes, torch.Generator().manual_seed(0), **training.net_overrides())
    try:
        net.load_state_dict(weights)
    except RuntimeError:
        raise ValueError(f"{str(d / WEIGHTS)!r} does not fit a {training.arch} for {in_shape} inputs and {classes} "
                         f"classes; {hint}") from None
    return Teacher(net.to(device or "cpu").eval(), training, dataset, info["sha256"], str(d),
                   dict(info.get("measured", {})))


def _sre2l_teacher(d: Path, device, hint: str) -> Teacher:
    """The BatchNorm teacher of an SRe2L run (``recipes/sre2l.py``'s ``<output>/teacher``) as a relabelling teacher:
    one kind of teacher folder serves both commands. Only a teacher of images (``space: pixel``) fits: relabel feeds it
    the set's decoded images."""
    from .data import get_dataset
    from .sre2l import load_teacher as load_sre2l

    try:
        net, meta = load_sre2l(d)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{str(d / SRE2L_CONFIG)!r} is not a gendistill teacher ({type(e).__name__}: {e}); "
                         f"{hint}") from None
    if meta.get("format") != "gendistill-sre2l-teacher-1":
        raise ValueError(f"{str(d / SRE2L_CONFIG)!r} is not a gendistill teacher; {hint}")
    if meta.get("space") != "pixel":
        raise ValueError(f"the SRe2L teacher in {str(d)!r} judges {meta.get('space')} codes, not images; relabel "
                         "decodes the set and needs a teacher of images (an sre2l run with --match-space pixel), or "
                         f"{hint[0].lower() + hint[1:]}")
    dataset = meta.get("dataset_record")
    if not isinstance(dataset, dict):  # written before the record was stored: a built-in dataset's normalisation is
        if meta.get("dataset") == "imagefolder":  # a constant of the dataset (the same for both splits)
            raise ValueError(f"the SRe2L teacher in {str(d)!r} predates the dataset record an ImageFolder teacher "
                             "needs (its normalisation); run recipes/sre2l.py again to train a new one")
        dataset = get_dataset(meta["dataset"], "test").meta()
    measured = {"test_accuracy": meta["test_accuracy"]} if "test_accuracy" in meta else {}
    return Teacher(net.to(device or "cpu").eval(), dict(meta.get("training", {}), kind="sre2l"), dataset,
                   meta["sha256"], str(d), measured)
