"""How the distillation loop draws real batches: ``uniform`` (any samples of the class, the field's default) or
``dream`` (DREAM: Liu et al., ICCV 2023, "Efficient Dataset Distillation by Representative Matching").

A real sampler is a :class:`~gendistill.cache.LatentSplit` (the loop only calls ``sample_class(c, n, generator)``,
``class_indices(c)`` and reads ``latents``), so it plugs into any objective that samples real data without the loop
or the objectives knowing: ``real_sampler(name, split, ...)`` wraps the split the loop is given.

DREAM replaces random real batches by representative and diverse ones: each class's real samples (latents, or images
in the pixel match space) are split into ``clusters`` sub-clusters by k-means (k-means++ seeding), once, before the
loop, and every batch of the class takes the same share from every sub-cluster (the remainder going to sub-clusters
drawn at random), each share drawn at random from the ``core`` fraction of the sub-cluster nearest its centre. With as
many sub-clusters as the batch (the default, DREAM's setting) a batch holds one sample near every sub-cluster centre.
DREAM's own code re-clusters the matching network's features every few iterations and takes the sample nearest each
centre; here the clustering is of the fixed latents, computed once, and the draw inside the core keeps successive
batches different.
"""

from __future__ import annotations

import math

import torch

from .cache import LatentSplit
from .registry import Registry

SAMPLERS: Registry = Registry("real sampler")
DREAM_CORE = 0.25  # a share is drawn from this fraction of its sub-cluster nearest the centre
KMEANS_ITERS = 10


def kmeans_pp(x: torch.Tensor, k: int, iters: int = KMEANS_ITERS, generator: torch.Generator
              | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of the rows of ``x`` (N, D) from k-means++ seeding (Arthur & Vassilvitskii, 2007: each next
    centre drawn with probability proportional to the squared distance to the nearest chosen one): centres (k, D) and
    assignments (N,)."""
    centres = [x[int(torch.randint(len(x), (1,), generator=generator))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        if float(d2.sum()) <= 0:  # fewer distinct points than k: any point will do
            i = int(torch.randint(len(x), (1,), generator=generator))
        else:
            i = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return lloyd(x, torch.stack(centres).clone(), iters)


def lloyd(x: torch.Tensor, centres: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``iters`` Lloyd steps of k-means on the rows of ``x`` (N, D) from ``centres`` (k, D), updated in place (a centre
    with no members stays): the centres and the assignments (N,)."""
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        for j in range(len(centres)):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres, torch.cdist(x, centres).argmin(1)


class DreamSplit(LatentSplit):
    """A split whose ``sample_class`` draws DREAM batches; ``cluster[i]`` is row i's sub-cluster within its class and
    ``rank[i]`` its position by distance to that sub-cluster's centre (0 = nearest)."""

    def __init__(self, split: LatentSplit, cluster: torch.Tensor, rank: torch.Tensor, clusters: int,
                 core: float = DREAM_CORE):
        super().__init__(split.latents, split.labels, split.num_classes, split.space)
        if not 0 < core <= 1:
            raise ValueError(f"the DREAM core fraction must lie in (0, 1], got {core}")
        self.cluster, self.rank, self.clusters, self.core = cluster, rank, clusters, core
        self._members: dict[int, list[torch.Tensor]] = {}

    @classmethod
    def build(cls, split: LatentSplit, clusters: int, generator: torch.Generator | None = None,
              core: float = DREAM_CORE) -> DreamSplit:
        """k-means (``clusters`` per class, fewer for a smaller class) of each class's flattened latents."""
        if clusters < 1:
            raise ValueError(f"DREAM needs at least 1 sub-cluster per class, got {clusters}")
        cluster = torch.zeros(len(split.labels), dtype=torch.int64)
        rank = torch.zeros(len(split.labels), dtype=torch.int64)
        for c in range(split.num_classes):
            idx = split.class_indices(c)
            if len(idx) == 0:
                continue
            x = split.latents[idx].flatten(1).float()
            k = min(clusters, len(idx))
            centres, assign = kmeans_pp(x, k, generator=generator)
            d = (x - centres[assign]).pow(2).sum(1)
            for j in range(k):
                members = (assign == j).nonzero().flatten()
                order = members[d[members].argsort()]
                rank[idx[order]] = torch.arange(len(order))
            cluster[idx] = assign
        return cls(split, cluster, rank, clusters, core)

    def members(self, c: int) -> list[torch.Tensor]:
        """Row indices of class ``c`` per non-empty sub-cluster, nearest the centre first."""
        if c not in self._members:
            idx = self.class_indices(c)
            groups = []
            for j in self.cluster[idx].unique().tolist():
                rows = idx[self.cluster[idx] == j]
                groups.append(rows[self.rank[rows].argsort()])
            self._members[c] = groups
        return self._members[c]

    def sample_class(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = self.class_indices(c)
        if n > len(idx):
            raise ValueError(f"class {c} has {len(idx)} real samples, fewer than the {n} asked for; lower --ipc or "
                             "--batch-real")
        groups = self.members(c)
        share = [0] * len(groups)
        order = torch.randperm(len(groups), generator=generator).tolist()
        left = n
        # round-robin from a random start: equal shares, the remainder to random sub-clusters, none overfull
        while left:
            progressed = False
            for j in order:
                if left and share[j] < len(groups[j]):
                    share[j] += 1
                    left -= 1
                    progressed = True
            if not progressed:
                break
        out = []
        for j, k in enumerate(share):
            if k:
                core = groups[j][: max(k, math.ceil(self.core * len(groups[j])))]
                out.append(core[torch.randperm(len(core), generator=generator)[:k]])
        return torch.cat(out)

    def shard(self, rank: int, world: int) -> LatentSplit:
        if world == 1:
            return self
        keep = torch.cat([self.class_indices(c)[rank::world] for c in range(self.num_classes)])
        base = LatentSplit(self.latents[keep], self.labels[keep], self.num_classes, self.space)
        return DreamSplit(base, self.cluster[keep], self.rank[keep], self.clusters, self.core)


@SAMPLERS.register("uniform")
def uniform(split: LatentSplit, batch: int, generator: torch.Generator | None = None, clusters: int = 0) -> LatentSplit:
    """The split itself: batches of distinct random samples of the class."""
    return split


@SAMPLERS.register("dream")
def dream(split: LatentSplit, batch: int, generator: torch.Generator | None = None, clusters: int = 0) -> LatentSplit:
    """DREAM batches: ``clusters`` sub-clusters per class (0: as many as the real batch)."""
    return DreamSplit.build(split, clusters or batch, generator)


def real_sampler(name: str, split: LatentSplit, batch: int, generator: torch.Generator | None = None,
                 clusters: int = 0) -> LatentSplit:
    """``split`` as the named sampler draws it (``uniform`` returns it unchanged)."""
    if clusters < 0:
        raise ValueError(f"--dream-clusters must be 0 (as many as the real batch) or more, got {clusters}")
    return SAMPLERS.get(name)(split, batch, generator, clusters)
