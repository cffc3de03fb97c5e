"""Selection: coreset baselines that pick real samples, and YOCO pruning that picks samples of a distilled set.

Coresets (``gendistill select --method M --ipc K``), all class-balanced (K per class), each written as a normal set
file (the chosen real samples' latents, or their pixels with the pixel backbone) so that everything downstream works:

- ``random``: K distinct random samples per class.
- ``herding``: the greedy herding of Welling (2009) as used for coresets by Rebuffi et al. (iCaRL) and the DC
  benchmark: each step adds the sample that brings the mean of the chosen ones closest to the class mean.
- ``kcenter``: greedy k-center (Sener & Savarese, 2018): start at the sample nearest the class mean (deterministic),
  then repeatedly add the sample farthest from everything chosen.
- ``kmeans``: the member nearest each of K k-means centres of the class (DREAM's representative selection; the same
  rule as ``gendistill init --init kmeans``).
- ``forgetting``: Toneva et al. (ICLR 2019). A network trained a few epochs on the real images counts each sample's
  forgetting events (correct -> incorrect between consecutive presentations; a sample never learned counts as
  infinitely forgotten). ``keep="most"`` (the default, Toneva's rule: the unforgettable samples are the ones to drop)
  keeps the K most-forgotten per class, ``keep="least"`` the K least; ties are broken at random.

herding, kcenter and kmeans work on ``features``: ``raw`` (the flattened latents the set will hold: a VAE's latents,
or the pixels) or ``net`` (the penultimate features of the network trained for the forgetting scores).

YOCO (He et al., NeurIPS 2023, "You Only Condense Once"): ``gendistill prune SET --ipc K`` keeps K samples per class of
a distilled set by two rules: (1) the LBPE score, the L2 distance between a network's softmax output and the one-hot
label, taken at the top-k training epochs by training accuracy of a network trained on the set and averaged over
them; the low-score (easy) samples are kept, the paper's rule for small budgets; (2) balanced construction: the same
number per class, not a global ranking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from .cache import LatentSplit
from .data import ImageDataset
from .registry import Registry
from .teacher import Dynamics, NetTraining, embed, train_net

SELECTORS: Registry = Registry("selection method")
FEATURES = ("raw", "net")
KEEP = ("most", "least")
PRUNE_RULES = ("low", "high", "random")


# ------------------------------------------------------------------------------------------- the algorithms


def herding(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows of ``x`` (n, D) chosen by greedy herding towards the mean of ``x``."""
    x = x.double()
    n = len(x)
    if k > n:
        raise ValueError(f"cannot choose {k} of {n} samples")
    mu, total = x.mean(0), torch.zeros(x.shape[1], dtype=x.dtype)
    sq = (x * x).sum(1)
    taken = torch.zeros(n, dtype=torch.bool)
    chosen = []
    for t in range(k):
        r = (t + 1) * mu - total  # || (t+1) mu - total - x_i ||^2 = |r|^2 - 2 r.x_i + |x_i|^2
        d = sq - 2 * (x @ r)
        d[taken] = float("inf")
        i = int(d.argmin())
        chosen.append(i)
        taken[i] = True
        total += x[i]
    return torch.tensor(chosen, dtype=torch.int64)


def kcenter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows of ``x`` (n, D) by greedy k-center, starting at the row nearest the mean."""
    x = x.double()
    n = len(x)
    if k > n:
        raise ValueError(f"cannot choose {k} of {n} samples")
    first = int(((x - x.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    dist = ((x - x[first]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, ((x - x[i]) ** 2).sum(1))
    return torch.tensor(chosen, dtype=torch.int64)


def kmeans_members(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the member nearest each of ``k`` k-means centres of ``x`` (distinct members)."""
    from .synthetic import kmeans

    if k > len(x):
        raise ValueError(f"cannot choose {k} of {len(x)} samples")
    centres, _ = kmeans(x.float(), k, generator=generator)
    d = torch.cdist(centres, x.float())
    chosen: list[int] = []
    for j in range(k):
        for i in d[j].argsort().tolist():
            if i not in chosen:
                chosen.append(i)
                break
    return torch.tensor(chosen, dtype=torch.int64)


def rank_keep(scores: torch.Tensor, k: int, highest: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the ``k`` highest (or lowest) ``scores``, ties broken at random by ``generator``."""
    perm = torch.randperm(len(scores), generator=generator)
    order = torch.sort(scores[perm], descending=highest, stable=True).indices
    return perm[order[:k]]


# ------------------------------------------------------------------------------------------------ the pool


class Pool:
    """The real samples a coreset picks from: ``real`` (a latent cache, or images), the images of its rows (the
    train split in the cache's class-major order), and on demand the features and training dynamics methods need."""

    def __init__(self, real: LatentSplit, train: ImageDataset, features: str = "raw", net: NetTraining | None = None,
                 device=None, progress: bool = True):
        if features not in FEATURES:
            raise ValueError(f"unknown features {features!r}; use one of {', '.join(FEATURES)}")
        self.real, self.train, self.features_kind = real, train, features
        self.net_cfg = net or NetTraining()
        self.device, self.progress = device, progress
        self._images: torch.Tensor | None = None
        self._trained: tuple[torch.nn.Module, Dynamics] | None = None

    @property
    def num_classes(self) -> int:
        return self.real.num_classes

    def class_indices(self, c: int) -> torch.Tensor:
        return self.real.class_indices(c)

    def order(self) -> torch.Tensor:
        """The train-split index of each row: the dataset's order (images, the pixel backbone) or the latent cache's
        class-major order."""
        labels = self.real.labels
        if len(labels) == len(self.train) and torch.equal(labels, self.train.labels):
            return torch.arange(len(labels))
        order = torch.cat([self.train.class_indices(c) for c in range(self.num_classes)])
        if len(order) != len(labels) or not torch.equal(self.train.labels[order], labels):
            raise ValueError("the latent cache's rows do not line up with the dataset's images; delete the cache "
                             "directory (see --cache-dir) so that it is rebuilt")
        return order

    def images(self) -> torch.Tensor:
        """The images of the pool's rows, in [0, 1]."""
        if self._images is None:
            self._images = self.real.latents if self.real.space == "pixel" else self.train.float_images(self.order())
        return self._images

    def trained(self) -> tuple[torch.nn.Module, Dynamics]:
        """A network trained on the pool's images with its training dynamics (computed once)."""
        if self._trained is None:
            net, dyn = train_net(self.images(), self.real.labels, self.train.image_shape, self.num_classes,
                                 self.train.mean, self.train.std, self.net_cfg, self.device, track=True,
                                 progress=self.progress, desc="forgetting scores")
            self._trained = (net, dyn)
        return self._trained

    def features(self) -> torch.Tensor:
        if self.features_kind == "raw":
            return self.real.latents.flatten(1).float()
        net, _ = self.trained()
        return embed(net, self.images(), self.train.mean, self.train.std, self.device)


def _per_class(pick: Callable[[torch.Tensor, int, torch.Generator | None], torch.Tensor]):
    """A selector applying ``pick(features of one class, ipc, generator)`` to every class."""

    def select(pool: Pool, ipc: int, generator: torch.Generator | None = None, **_) -> torch.Tensor:
        x = pool.features()
        out = []
        for c in range(pool.num_classes):
            idx = pool.class_indices(c)
            out.append(idx[pick(x[idx], ipc, generator)])
        return torch.cat(out)

    return select


@SELECTORS.register("random")
def select_random(pool: Pool, ipc: int, generator=None, **_) -> torch.Tensor:
    return torch.cat([pool.real.sample_class(c, ipc, generator) for c in range(pool.num_classes)])


SELECTORS.register("herding")(_per_class(lambda x, k, g: herding(x, k)))
SELECTORS.register("kcenter")(_per_class(lambda x, k, g: kcenter(x, k)))
SELECTORS.register("kmeans")(_per_class(kmeans_members))


@SELECTORS.register("forgetting")
def select_forgetting(pool: Pool, ipc: int, generator=None, keep: str = "most", **_) -> torch.Tensor:
    if keep not in KEEP:
        raise ValueError(f"unknown --keep {keep!r}; use one of {', '.join(KEEP)}")
    scores = pool.trained()[1].forgetting_scores()
    return torch.cat([pool.class_indices(c)[rank_keep(scores[pool.class_indices(c)], ipc, keep == "most", generator)]
                      for c in range(pool.num_classes)])


def select_indices(method: str, pool: Pool, ipc: int, generator: torch.Generator | None = None,
                   **options) -> torch.Tensor:
    """Rows of ``pool.real`` chosen by ``method``: ``ipc`` per class, class by class."""
    if ipc < 1:
        raise ValueError(f"--ipc must be at least 1, got {ipc}")
    smallest = min(len(pool.class_indices(c)) for c in range(pool.num_classes))
    if ipc > smallest:
        raise ValueError(f"--ipc {ipc} is more than the {smallest} samples of the smallest class; lower --ipc")
    return SELECTORS.get(method)(pool, ipc, generator, **options)


def selected_set(pool: Pool, idx: torch.Tensor, backbone, run: dict):
    """A :class:`SyntheticSet` of the chosen rows (images of a backbone without a latent cache are encoded now)."""
    from .synthetic import SyntheticSet

    latents, labels = pool.real.latents[idx], pool.real.labels[idx]
    if pool.real.space == "pixel" and backbone.kind != "pixel":
        device = next(backbone.parameters(), latents).device
        with torch.no_grad():
            latents = backbone.encode(latents.to(device), labels=labels).detach().cpu()
    return SyntheticSet(latents, labels, backbone=backbone.describe(), dataset=pool.train.meta(), run=run)


# ------------------------------------------------------------------------------------------ YOCO pruning


@dataclass
class LBPEConfig:
    """How the LBPE score of a set is measured: networks trained on the set (the evaluation protocol's optimiser and
    DSA augmentation), the prediction error read at the ``top_k`` epochs of highest training accuracy."""

    net: NetTraining = None  # type: ignore[assignment]
    top_k: int = 3
    nets: int = 1

    def __post_init__(self):
        if self.net is None:
            self.net = NetTraining(epochs=100, augment="dsa")
        if self.top_k < 1 or self.top_k > self.net.epochs:
            raise ValueError(f"top-k epochs must be between 1 and the {self.net.epochs} training epochs, got "
                             f"{self.top_k}")
        if self.nets < 1:
            raise ValueError(f"nets must be at least 1, got {self.nets}")


def lbpe_from_dynamics(dyn: Dynamics, hard_labels: torch.Tensor, top_k: int) -> torch.Tensor:
    """Per sample, the mean over the ``top_k`` epochs of highest training accuracy of || softmax - onehot(label)
    ||_2."""
    epochs = dyn.epoch_accuracy.topk(min(top_k, len(dyn.epoch_accuracy))).indices
    onehot = F.one_hot(hard_labels, dyn.probs.shape[2]).float()
    return (dyn.probs[epochs] - onehot).norm(dim=2).mean(0)


def lbpe_scores(images: torch.Tensor, labels: torch.Tensor, num_classes: int, mean, std, cfg: LBPEConfig | None = None,
                device=None, progress: bool = True) -> torch.Tensor:
    """YOCO's LBPE score of every image of a set (labels hard, or soft: trained on them, scored against the argmax)."""
    cfg = cfg or LBPEConfig()
    hard = labels.argmax(1) if labels.ndim == 2 else labels
    total = torch.zeros(len(images))
    for s in range(cfg.nets):
        _, dyn = train_net(images, labels, tuple(images.shape[1:]), num_classes, mean, std,
                           replace(cfg.net, seed=cfg.net.seed + s), device, track=True, progress=progress,
                           desc=f"LBPE net {s + 1}/{cfg.nets}")
        total += lbpe_from_dynamics(dyn, hard, cfg.top_k)
    return total / cfg.nets


def prune_indices(scores: torch.Tensor, hard_labels: torch.Tensor, ipc: int, num_classes: int, rule: str = "low",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Balanced construction: per class, the ``ipc`` samples of lowest score (``low``, YOCO's rule), highest
    (``high``) or random ones (``random``); indices sorted, so the kept samples keep their order."""
    if rule not in PRUNE_RULES:
        raise ValueError(f"unknown prune rule {rule!r}; use one of {', '.join(PRUNE_RULES)}")
    keep = []
    for c in range(num_classes):
        idx = (hard_labels == c).nonzero().flatten()
        if ipc > len(idx):
            raise ValueError(f"class {c} has {len(idx)} samples in the set, fewer than --ipc {ipc}; a set can only be "
                             "pruned to a smaller IPC")
        if rule == "random":
            keep.append(idx[torch.randperm(len(idx), generator=generator)[:ipc]])
        else:
            keep.append(idx[rank_keep(scores[idx], ipc, highest=rule == "high", generator=generator)])
    return torch.cat(keep).sort().values


def derived_set(syn, run: dict, keep: torch.Tensor | None = None, labels: torch.Tensor | None = None):
    """A new set made from ``syn``: its samples ``keep`` (all by default), ``labels`` instead of its own if given, and
    the same backbone, dataset, lr and storage settings (a set's storage dtype and decoder record, where it has
    them)."""
    from .synthetic import SyntheticSet

    keep = torch.arange(len(syn)) if keep is None else keep
    out = SyntheticSet(syn.latents.detach()[keep], syn.labels.detach()[keep] if labels is None else labels,
                       None if syn.lr is None else syn.lr.detach(), backbone=syn.backbone_meta,
                       dataset=syn.dataset_meta, run=run)
    for attr in ("latent_dtype", "decoder"):  # storage settings, kept as the source has them
        if hasattr(syn, attr):
            setattr(out, attr, getattr(syn, attr))
    return out


def pruned_set(syn, keep: torch.Tensor, record: dict):
    """The samples ``keep`` of ``syn`` as a new set; its run record names the pruning and the set it came from."""
    ipc = int(torch.bincount(syn.hard_labels[keep], minlength=syn.num_classes).max())
    source = dict(syn.run_meta)
    run = {**source, "method": f"{source.get('method', 'set')}+yoco", "ipc": ipc,
           "prune": {**record, "source_ipc": syn.ipc}}
    return derived_set(syn, run, keep=keep)


def lbpe_record(cfg: LBPEConfig, rule: str) -> dict:
    return {"score": "lbpe", "rule": rule, "balanced": True, "top_k": cfg.top_k, "nets": cfg.nets,
            "training": asdict(cfg.net)}
