"""DD-Ranking-style scores of a distilled set: how much of its accuracy the data carries, apart from labels and
augmentation.

Definitions from DD-Ranking (Li et al., 2025, "DD-Ranking: Rethinking the Evaluation of Dataset Distillation",
arXiv:2505.13300; github.com/NUS-HPC-AI-Lab/DD-Ranking, ``doc/introduction.md`` and ``ddranking/metrics/``), with
every accuracy a fraction of the test split in [0, 1]:

- hard-label recovery      HLR = Acc(real, hard) - Acc(syn, hard)              (lower is better)
- improvement over random  IOR = Acc(syn, any) - Acc(rdm, any)                 (higher is better)
- label-robust score       LRS = (e^a - e^-1) / (e - e^-1),  a = w IOR - (1 - w) HLR,   w = 0.5
- augmentation-robust score ARS = (e^b - e^-1) / (e - e^-1),
                           b = g (Acc(syn, aug) - Acc(rdm, aug)) + (1 - g) (Acc(syn, no aug) - Acc(rdm, no aug)),
                           g = 0.5

"real" is the whole train split, "syn" the set, "rdm" random real images of the train split with the set's per-class
counts; "hard" trains on hard labels (a soft set's argmax), "any" on the set's own labels (soft ones: random images get
soft labels from the same teacher), "aug" with the protocol's DSA augmentation, "no aug" without. With accuracies in
[0, 1], a and b lie in [-1, 1] and LRS and ARS in [0, 1] (DD-Ranking prints them as percentages; here they stay
fractions). LRS = 1 / (1 + e) = 0.269 when the set is exactly as far above random as below the full data.

Where this differs from DD-Ranking's code, on purpose: DD-Ranking tunes the learning rate, and reports the best
accuracy of the last 20% of the epochs, on the test split; here the learning rate is chosen on a validation split
held out from the training data (``val_per_class`` images of each class, never drawn as random images) and the test
accuracy is the final network's. The random baseline is averaged over ``draws`` (>= 3) independent draws: each round
trains the set's networks and one random draw's with the round's seed, and every score is the mean over rounds (std
beside it). The learning rate is chosen once per kind of training (set or random, with or without augmentation, hard
or soft labels) on round 0's data; a set with a learned lr (trajectory matching) uses it, as DD-Ranking does.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace

import torch

from .config import Checked, setting
from .data import ImageDataset
from .evaluate import EvalConfig, train_and_test

DD_RANKING = "DD-Ranking (Li et al. 2025, arXiv:2505.13300): HLR, IOR, LRS, ARS"
DEFAULT_LR_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)  # DD-Ranking's grid


def _check(name: str, acc: float) -> float:
    acc = float(acc)
    if not (0.0 <= acc <= 1.0):
        raise ValueError(f"{name} = {acc} is not a fraction in [0, 1]; accuracies are fractions, not percentages")
    return acc


def exp_normalise(x: float) -> float:
    """DD-Ranking's map of [-1, 1] onto [0, 1]: (e^x - e^-1) / (e - e^-1)."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def hard_label_recovery(real_hard: float, syn_hard: float) -> float:
    """HLR = Acc(real, hard) - Acc(syn, hard)."""
    return _check("Acc(real, hard)", real_hard) - _check("Acc(syn, hard)", syn_hard)


def improvement_over_random(syn_any: float, rdm_any: float) -> float:
    """IOR = Acc(syn, any) - Acc(rdm, any)."""
    return _check("Acc(syn, any)", syn_any) - _check("Acc(rdm, any)", rdm_any)


def label_robust_score(hlr: float, ior: float, w: float = 0.5) -> float:
    """LRS = exp_normalise(w IOR - (1 - w) HLR)."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"the LRS weight w must lie in [0, 1], got {w}")
    return exp_normalise(w * ior - (1 - w) * hlr)


def augmentation_robust_score(syn_aug: float, rdm_aug: float, syn_naug: float, rdm_naug: float,
                              gamma: float = 0.5) -> float:
    """ARS = exp_normalise(g (Acc(syn, aug) - Acc(rdm, aug)) + (1 - g) (Acc(syn, no aug) - Acc(rdm, no aug)))."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"the ARS weight gamma must lie in [0, 1], got {gamma}")
    accs = {"Acc(syn, aug)": syn_aug, "Acc(rdm, aug)": rdm_aug, "Acc(syn, no aug)": syn_naug,
            "Acc(rdm, no aug)": rdm_naug}
    a, b, c, d = (_check(k, v) for k, v in accs.items())
    return exp_normalise(gamma * (a - b) + (1 - gamma) * (c - d))


# ------------------------------------------------------------------------------------------- measurement


@dataclass
class ScoreConfig(Checked):
    draws: int = setting(3, min=3)  # random-real draws = evaluation rounds (the random baseline needs at least 3)
    # validation images per class, held out of the train split for choosing the lr
    val_per_class: int = setting(100, min=1)
    lr_grid: tuple[float, ...] = setting(DEFAULT_LR_GRID, above=0)
    w: float = setting(0.5, min=0, max=1)  # LRS: weight of IOR (1 - w on HLR)
    gamma: float = setting(0.5, min=0, max=1)  # ARS: weight of the augmented difference
    seed: int = setting(0, min=0)


def validation_split(train: ImageDataset, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, validation indices) of ``train``: ``per_class`` random images of each class are held out."""
    g = torch.Generator().manual_seed(seed)
    val = []
    for c in range(train.num_classes):
        idx = train.class_indices(c)
        if per_class >= len(idx):
            raise ValueError(f"class {c} of {train.name} has {len(idx)} train images; a validation split of "
                             f"{per_class} per class leaves none to draw from; lower --val-per-class")
        val.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    val = torch.cat(val).sort().values
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


def subset(train: ImageDataset, idx: torch.Tensor, split: str) -> ImageDataset:
    return ImageDataset(train.name, split, train.images[idx], train.labels[idx], list(train.classes), train.mean,
                        train.std)


def random_draw(train: ImageDataset, pool: torch.Tensor, counts: list[int], generator: torch.Generator) -> torch.Tensor:
    """``counts[c]`` distinct random images of each class c, from the train indices ``pool``."""
    labels = train.labels[pool]
    out = []
    for c, n in enumerate(counts):
        idx = pool[labels == c]
        if n > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images outside the validation split, fewer than the set's {n}")
        out.append(idx[torch.randperm(len(idx), generator=generator)[:n]])
    return torch.cat(out)


class _Trainer:
    """Train one network of the protocol and test it; the lr of each kind of training chosen on the validation split."""

    def __init__(self, test: ImageDataset, val: ImageDataset, cfg: EvalConfig, scfg: ScoreConfig, device, arch: str):
        self.test, self.val, self.cfg, self.scfg, self.device, self.arch = test, val, cfg, scfg, device, arch
        self.lrs: dict[str, dict] = {}

    def _cfg(self, augment: bool) -> EvalConfig:
        return self.cfg if augment else replace(self.cfg, augment="none")

    def choose_lr(self, kind: str, x, y, augment: bool, fixed: float | None = None) -> float:
        if kind not in self.lrs:
            if fixed is not None:
                self.lrs[kind] = {"lr": fixed, "chosen_by": "the set's learned lr"}
            else:
                val_accs = {}
                for lr in self.scfg.lr_grid:
                    g = torch.Generator().manual_seed(self.scfg.seed * 1000 + 999)
                    val_accs[lr] = train_and_test(x, y, self.val, self._cfg(augment), g, self.device, self.val.mean,
                                                  self.val.std, lr=lr, arch=self.arch)
                best = max(self.scfg.lr_grid, key=lambda lr: (val_accs[lr], -self.scfg.lr_grid.index(lr)))
                self.lrs[kind] = {"lr": best, "chosen_by": "validation accuracy",
                                  "val_accs": {str(k): v for k, v in val_accs.items()}}
        return self.lrs[kind]["lr"]

    def accuracy(self, kind: str, x, y, augment: bool, round_: int, fixed: float | None = None) -> float:
        lr = self.choose_lr(kind, x, y, augment, fixed)
        g = torch.Generator().manual_seed(self.scfg.seed * 1000 + round_)
        return train_and_test(x, y, self.test, self._cfg(augment), g, self.device, self.test.mean, self.test.std, lr=lr,
                              arch=self.arch)


def full_data_accuracy(train: ImageDataset, test: ImageDataset, cfg: EvalConfig, scfg: ScoreConfig, device=None,
                       arch: str | None = None, lr: float = 0.01) -> dict:
    """Acc(real, hard): one network of the protocol trained on the train split minus the validation split (lr 0.01,
    DD-Ranking's default for real data), tested on ``test``; with its settings, to be cached in a file."""
    fit, _ = validation_split(train, scfg.val_per_class, scfg.seed)
    g = torch.Generator().manual_seed(scfg.seed * 1000)
    acc = train_and_test(train.float_images(fit), train.labels[fit], test, cfg, g, device or torch.device("cpu"),
                         test.mean, test.std, lr=lr, arch=arch or cfg.arch)
    return {"accuracy": acc, "dataset": train.name, "arch": arch or cfg.arch, "lr": lr, "train_images": len(fit),
            "settings": asdict(cfg), "val_per_class": scfg.val_per_class, "seed": scfg.seed}


def dd_scores(images: torch.Tensor, labels: torch.Tensor, train: ImageDataset, test: ImageDataset, full_data_acc: float,
              cfg: EvalConfig | None = None, scfg: ScoreConfig | None = None, device=None, lr: float | None = None,
              teacher=None, arch: str | None = None) -> dict:
    """HLR, IOR, LRS and ARS of a set (``images`` (N, C, H, W) in [0, 1], ``labels`` hard (N,) or soft (N, K)), every
    accuracy and chosen lr beside them. ``teacher`` (a :class:`gendistill.teacher.Teacher`) gives random images soft
    labels when the set has soft ones; ``lr`` is the set's learned lr, if any."""
    cfg, scfg = cfg or EvalConfig(), scfg or ScoreConfig()
    device = device or torch.device("cpu")
    arch = arch or cfg.arch
    full = _check("the full-data accuracy", full_data_acc)
    soft = labels.ndim == 2
    if soft and teacher is None:
        raise ValueError("the set has soft labels: pass --teacher DIR (the teacher that made them) so that the "
                         "random baseline gets soft labels the same way")
    hard = labels.argmax(1) if soft else labels
    counts = torch.bincount(hard, minlength=train.num_classes).tolist()
    fit, val_idx = validation_split(train, scfg.val_per_class, scfg.seed)
    run = _Trainer(test, subset(train, val_idx, "val"), cfg, scfg, device, arch)
    rounds = []
    for r in range(scfg.draws):
        drawn = random_draw(train, fit, counts, torch.Generator().manual_seed(scfg.seed * 1000 + 500 + r))
        rx, ry = train.float_images(drawn), train.labels[drawn]
        ry_any = teacher.probs(rx, device).to(labels.dtype) if soft else ry
        acc = {"syn_hard": run.accuracy("syn hard aug", images, hard, True, r, lr)}
        acc["syn_aug"] = run.accuracy("syn any aug", images, labels, True, r, lr) if soft else acc["syn_hard"]
        acc["syn_naug"] = run.accuracy("syn any no-aug", images, labels, False, r, lr)
        acc["rdm_aug"] = run.accuracy("rdm any aug", rx, ry_any, True, r)
        acc["rdm_naug"] = run.accuracy("rdm any no-aug", rx, ry_any, False, r)
        hlr = hard_label_recovery(full, acc["syn_hard"])
        ior = improvement_over_random(acc["syn_aug"], acc["rdm_aug"])
        rounds.append({"accuracies": acc, "hlr": hlr, "ior": ior, "lrs": label_robust_score(hlr, ior, scfg.w),
                       "ars": augmentation_robust_score(acc["syn_aug"], acc["rdm_aug"], acc["syn_naug"],
                                                        acc["rdm_naug"], scfg.gamma),
                       "random_indices": drawn.tolist()})

    def summary(values):
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "values": values}

    out = {"definition": DD_RANKING, "full_data_accuracy": full, "soft_labels": soft, "arch": arch, "per_class": counts,
           "settings": {**asdict(scfg), "lr_grid": list(scfg.lr_grid), "protocol": asdict(cfg)},
           "validation_split": {"per_class": scfg.val_per_class, "seed": scfg.seed, "size": len(val_idx)},
           "lrs_chosen": run.lrs, "rounds": rounds}
    for key in ("hlr", "ior", "lrs", "ars"):
        out[key] = summary([r[key] for r in rounds])
    for key in ("syn_hard", "syn_aug", "syn_naug", "rdm_aug", "rdm_naug"):
        out[f"acc_{key}"] = summary([r["accuracies"][key] for r in rounds])
    return out
