"""Shared pieces of the plug-in studies (benchmarks/plugin_targets.py, benchmarks/crossover.py): a cheap *screening*
evaluation, the sets they compare, and a results file that survives an interrupted run.

The screening evaluation is NOT the standard protocol (docs/protocol.md: ConvNet-3 width 128, 300 epochs, the whole
test split). It trains ConvNet-3 of width 32 (instance norm) for a fixed number of SGD iterations (default 300, batch
256, the protocol's optimiser, lr x0.1 at half, DSA), so every IPC gets the same compute, and tests on a fixed
class-balanced subset of the test split (the first 200 images of each class). Every figure it gives is labelled with
``Screening.label()``; ``--protocol standard`` switches to the standard protocol (gendistill.evaluate) instead.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gendistill.data import get_dataset
from gendistill.evaluate import EvalConfig, evaluate, test_accuracy
from gendistill.hub import find_backbone
from gendistill.scores import subset
from gendistill.synthetic import SyntheticSet
from gendistill.teacher import NetTraining, train_net

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Screening:
    protocol: str = "screening"  # screening | standard
    iters: int = 300
    width: int = 32
    nets: int = 1
    test_per_class: int = 200
    batch: int = 256
    epochs: int = 300  # standard protocol only

    def label(self) -> str:
        if self.protocol == "standard":
            return f"standard protocol: ConvNet-3 w128, {self.epochs} epochs, {self.nets} net(s), the whole test split"
        return (f"SCREENING: ConvNet-3 w{self.width}, {self.iters} SGD iterations (batch {self.batch}), DSA, "
                f"{self.nets} net(s), test on {10 * self.test_per_class} test images ({self.test_per_class}/class)")


class Data:
    def __init__(self):
        self.train = get_dataset("fashion-mnist", "train")
        self.test = get_dataset("fashion-mnist", "test")
        idx = torch.cat([self.test.class_indices(c)[: 200] for c in range(self.test.num_classes)])
        self.test_small = subset(self.test, idx, "test")


def screen(images: torch.Tensor, labels: torch.Tensor, data: Data, cfg: Screening, seed: int = 0) -> dict:
    """Mean and std test accuracy (fractions) of ``cfg.nets`` networks trained on ``images`` in [0, 1]."""
    start = time.time()
    if cfg.protocol == "standard":
        r = evaluate(images, labels, data.test, EvalConfig(epochs=cfg.epochs, runs=cfg.nets, seed=seed), progress=False)
        return {"accs": r["archs"]["convnet"]["accs"], "mean": r["mean"], "std": r["std"],
                "seconds": round(time.time() - start, 1), "label": cfg.label()}
    test = data.test if cfg.test_per_class >= 1000 else subset(data.test, torch.cat(
        [data.test.class_indices(c)[: cfg.test_per_class] for c in range(10)]), "test")
    per_epoch = math.ceil(len(images) / cfg.batch)
    epochs = max(1, round(cfg.iters / per_epoch))
    accs = []
    for n in range(cfg.nets):
        net, _ = train_net(images, labels, tuple(images.shape[1:]), 10, data.train.mean, data.train.std,
                           NetTraining(width=cfg.width, epochs=epochs, batch=cfg.batch, augment="dsa", seed=seed * 1000
                                       + n),
                           progress=False)
        accs.append(test_accuracy(net, test, data.train.mean, data.train.std, torch.device("cpu")))
    return {"accs": accs, "mean": statistics.fmean(accs), "std": statistics.pstdev(accs), "epochs": epochs,
            "seconds": round(time.time() - start, 1), "label": cfg.label()}


def set_images(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A set file's decoded images in [0, 1] and its labels (the backbone recorded in the file, hash checked)."""
    syn = SyntheticSet.load(path)
    # shipped, Hub, or a known folder, by name + hash
    backbone = find_backbone(syn.backbone_meta, syn.dataset_meta, near=path)
    syn.check_backbone(backbone)
    return syn.decode(backbone).cpu(), syn.labels.detach().cpu()


def run(cmd: list, log) -> None:
    """Run a command (a recipe or ``gendistill``) from the repository root; its output goes to ``log``."""
    log(f"$ {' '.join(map(str, cmd))}")
    p = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True)
    tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-3:])
    log(tail)
    if p.returncode:
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n{tail}")


def latent_dm(out: Path, ipc: int, steps: int, log, *extra) -> Path:
    """LatentDD: M3D's MMD on the shipped VAE's latents from k-means centres (dm/fashion-mnist_ipc10_vae-latent.yaml)
    at another IPC / step count; ``out/set.safetensors`` (made once, reused when it exists)."""
    if not (out / "set.safetensors").exists():
        run([sys.executable, "recipes/latent_dm.py", "--config",
             "recipes/configs/dm/fashion-mnist_ipc10_vae-latent.yaml", "--ipc", ipc, "--steps", steps, "--eval-runs", 0,
             "--output", out, "--overwrite", *extra], log)
    return out / "set.safetensors"


class Results:
    """A JSON file of finished measurements, written after each one, so an interrupted study keeps what it did."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"settings": settings, "rows": {}}
        self.data["settings"] = settings

    def has(self, key: str) -> bool:
        return key in self.data["rows"]

    def get(self, key: str) -> dict:
        return self.data["rows"][key]

    def put(self, key: str, row: dict) -> None:
        self.data["rows"][key] = row
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)


def logger(path: Path):
    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        with path.open("a") as f:
            f.write(line + "\n")

    return log


def settings_of(cfg: Screening, **extra) -> dict:
    return {"evaluation": asdict(cfg), "label": cfg.label(), **extra}
