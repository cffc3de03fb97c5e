"""Decoupled SRe2L (Yin et al. 2023): squeeze, recover, relabel, around the one distillation loop.

- **squeeze** (:func:`train_teacher`): a BatchNorm ConvNet trained on the real data in the match space: normalised
  images (pixel match space; ``data="decoded"`` trains it on the backbone's reconstructions of them instead) or the
  backbone's latents (latent match space). Stored as a directory (:func:`save_teacher`): ``teacher.safetensors``
  (weights and BN running statistics) and ``config.json`` (net, shape, space, dataset, backbone hash, training
  settings, test accuracy), written atomically; the set records the directory and the weights' hash.
- **recover**: the ``sre2l`` objective (:mod:`gendistill.objectives.sre2l`) run by the distillation loop.
- **relabel** (:func:`relabel`): each sample's soft label is the teacher's softmax averaged over ``views`` augmented
  crops (the same augmentation as recover), stored in the set as (N, K) probabilities. SRe2L's own relabelling gives a
  fresh crop-level label every epoch of the student's training; the standard protocol here trains on stored labels, so
  the crops are averaged once (their bytes, N x K float32, are in the set file).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .cache import LatentSplit
from .io import atomic_dir, tensor_sha256
from .nets import fresh_net, get_net

TEACHER_WEIGHTS = "teacher.safetensors"
TEACHER_CONFIG = "config.json"
TEACHER_DATA = ("real", "decoded")


@dataclass
class TeacherConfig:
    net: str = "convnet-bn"
    depth: int = 3
    width: int = 64
    epochs: int = 2
    lr: float = 0.01  # SGD momentum 0.9, weight decay 5e-4, cosine decay over the epochs
    batch: int = 256
    augment: str = "auto"  # the match space's augmentation (DSA on images, the latent variant on latents) | none
    data: str = "real"  # real | decoded (pixel space: the backbone's reconstructions of the train split)
    seed: int = 0

    def __post_init__(self):
        if self.data not in TEACHER_DATA:
            raise ValueError(f"unknown --teacher-data {self.data!r}; use {' or '.join(TEACHER_DATA)}")
        for name in ("epochs", "batch", "depth", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--teacher-{name} must be >= 1, got {getattr(self, name)}")


def train_teacher(split: LatentSplit, cfg: TeacherConfig, transform, augment, device,
                  progress: bool = True) -> nn.Module:
    """A fresh ``cfg.net`` trained on ``split`` (images in [0, 1] fed through ``transform``, or latents)."""
    g = torch.Generator().manual_seed(cfg.seed)
    in_shape = tuple(split.latents.shape[1:])
    net = fresh_net(cfg.net, in_shape, split.num_classes, g, depth=cfg.depth, width=cfg.width).to(device)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise ValueError(f"--teacher-net {cfg.net} has no BatchNorm layers, which SRe2L's recover step matches; use "
                         "convnet-bn or resnet18bn")
    per_epoch = (len(split.labels) + cfg.batch - 1) // cfg.batch
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * per_epoch)
    bar = tqdm(total=cfg.epochs * per_epoch, desc="squeeze: train the teacher", disable=not progress,
               dynamic_ncols=True, leave=False)
    net.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(split.labels), generator=g)
        for i in range(0, len(order), cfg.batch):
            b = order[i : i + cfg.batch]
            x = transform(split.latents[b].to(device).float())
            x = augment.apply(x, augment.make_params(len(b), g, device))
            loss = F.cross_entropy(net(x), split.labels[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, split: LatentSplit, transform, device, batch: int = 1000) -> float:
    net.eval()
    correct = sum(
        int(
            (
                net(transform(split.latents[i : i + batch].to(device).float())).argmax(1).cpu()
                == split.labels[i : i + batch]
            ).sum()
        )
        for i in range(0, len(split.labels), batch)
    )
    return correct / max(len(split.labels), 1)


def save_teacher(net: nn.Module, directory: str | Path, meta: dict) -> str:
    """Write ``teacher.safetensors`` + ``config.json`` atomically; returns the weights' sha256."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    digest = tensor_sha256(state)
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / TEACHER_WEIGHTS))
        (tmp / TEACHER_CONFIG).write_text(json.dumps({**meta, "sha256": digest}, indent=2, sort_keys=True) + "\n")
    return digest


def load_teacher(directory: str | Path, expect: dict | None = None) -> tuple[nn.Module, dict]:
    """The teacher stored in ``directory`` and its config; ``expect`` (keys of the config) must match."""
    directory = Path(directory)
    if not (directory / TEACHER_CONFIG).is_file() or not (directory / TEACHER_WEIGHTS).is_file():
        raise FileNotFoundError(f"no SRe2L teacher in {str(directory)!r} (it needs {TEACHER_WEIGHTS} and "
                                f"{TEACHER_CONFIG}); leave out --teacher to train one (squeeze), or pass the directory "
                                "a previous run wrote")
    try:
        meta = json.loads((directory / TEACHER_CONFIG).read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{str(directory / TEACHER_CONFIG)!r} is not valid JSON; delete the directory to train the "
                         "teacher again") from None
    for key, want in (expect or {}).items():
        if json.loads(json.dumps(meta.get(key))) != json.loads(json.dumps(want)):
            raise ValueError(f"the teacher in {str(directory)!r} has {key} {meta.get(key)!r}, this run needs {want!r}; "
                             "pass a matching --teacher or leave it out to train one")
    net = get_net(meta["net"], tuple(meta["in_shape"]), meta["num_classes"], depth=meta["depth"], width=meta["width"])
    try:
        state = load_file(str(directory / TEACHER_WEIGHTS))
        net.load_state_dict(state)
    except Exception as e:  # a truncated file, or the weights of another net
        raise ValueError(f"{str(directory / TEACHER_WEIGHTS)!r} does not hold the weights its config describes "
                         f"({type(e).__name__}); delete the directory to train the teacher again") from None
    if "sha256" in meta and tensor_sha256(state) != meta["sha256"]:
        raise ValueError(f"{str(directory / TEACHER_WEIGHTS)!r} does not have the sha256 recorded in "
                         f"{TEACHER_CONFIG}; the file was altered or damaged, delete the directory to train the "
                         "teacher again")
    return net.eval(), meta


def teacher_meta(cfg: TeacherConfig, space: str, in_shape, num_classes: int, dataset: dict, backbone) -> dict:
    """What identifies a teacher: the input it sees and how it was trained."""
    return {"format": "gendistill-sre2l-teacher-1", "net": cfg.net, "depth": cfg.depth, "width": cfg.width,
            "space": space, "in_shape": list(in_shape), "num_classes": num_classes, "dataset": dataset.get("name"),
            "dataset_record": dataset,  # normalisation and shape: what `gendistill relabel --teacher` needs
            "backbone_sha256": backbone.weights_sha256() if space == "latent" or cfg.data == "decoded" else None,
            "training": asdict(cfg)}


def ensure_teacher(directory: str | Path, given: bool, cfg: TeacherConfig, space: str, in_shape, num_classes: int,
                   dataset: dict, backbone, train_split, test_split, transform, augment, device,
                   log=print) -> tuple[nn.Module, dict]:
    """Load the teacher in ``directory``; when it was not ``given`` by the user and does not exist yet, train and
    store it first (the squeeze step), with its test accuracy in its config."""
    meta = teacher_meta(cfg, space, in_shape, num_classes, dataset, backbone)
    identity = {k: meta[k] for k in ("net", "depth", "width", "space", "in_shape", "num_classes", "dataset",
                                     "backbone_sha256")}
    if given or Path(directory, TEACHER_CONFIG).exists():
        expect = identity if given else {**identity, "training": meta["training"]}
        return load_teacher(directory, expect)
    start = time.time()
    net = train_teacher(train_split(), cfg, transform, augment, device)
    meta["train_seconds"] = round(time.time() - start, 1)
    meta["test_accuracy"] = accuracy(net, test_split(), transform, device)
    save_teacher(net, directory, meta)
    log(f"squeeze: teacher {cfg.net} (width {cfg.width}) trained in {meta['train_seconds']} s, test accuracy "
        f"{100 * meta['test_accuracy']:.2f}% -> {directory}")
    return load_teacher(directory, identity)


@torch.no_grad()
def relabel(inputs: torch.Tensor, teacher: nn.Module, augment, views: int, temperature: float,
            generator: torch.Generator, batch: int = 256) -> torch.Tensor:
    """Soft labels (N, K): the teacher's softmax(logits / temperature) averaged over ``views`` augmented views."""
    if int(views) < 1:
        raise ValueError(f"--relabel-views must be >= 1, got {views}")
    if not temperature > 0:
        raise ValueError(f"--relabel-temperature must be > 0, got {temperature}")
    teacher.eval()
    total = None
    for _ in range(int(views)):
        params = augment.make_params(len(inputs), generator, inputs.device)
        x = augment.apply(inputs, params)
        probs = torch.cat([(teacher(x[i : i + batch]).float() / temperature).softmax(1)
                           for i in range(0, len(x), batch)])
        total = probs if total is None else total + probs
    return total / int(views)
