"""Distribution matching (DM, Zhao & Bilen 2023): match per-class mean embeddings of a freshly initialised net.

loss = sum_c || mean_i f(A(x_real_ci)) - mean_j f(A(x_syn_cj)) ||^2, with f a random ConvNet drawn anew each step
(its weights fixed) and A a siamese augmentation sharing its parameters between the real and synthetic batch.

``kernel`` picks the discrepancy between the two embedding clouds of a class: ``linear`` is DM's mean gap above (an
MMD with the linear kernel); ``gaussian`` is the MMD^2 of a sum of Gaussian kernels (M3D, Zhang et al. 2024), whose
bandwidths are multiples of the real embeddings' median squared distance, so it matches every moment and pushes the
synthetic samples of a class apart; ``mean+cov`` adds the gap between the two covariance matrices to DM's mean gap.

``proxy="trained"`` follows IDM (Zhao et al. 2023): instead of a fresh random net, each step embeds with a net drawn
from a queue of nets that keep learning to classify the real data (``proxy_train`` of them take one SGD step per
distillation step on that step's real batches), so the embedding sees the features a trained network uses; a net
that has taken ``proxy_max_steps`` steps is replaced by a fresh one. ``ce_weight`` adds IDM's cross-entropy of the
drawn net on the synthetic batch. The queue (nets, optimisers, counters) is the objective's checkpointed state.

Several processes split the classes (``parallel = "classes"``, see ``gendistill.objectives``): each matches its own
classes against the same nets and augmentation draws, and the gradients are summed, which gives the 1-process gradient.
IDM's queue trains on every class's real batch on every process, so it stays identical across processes (its
training is repeated, not split); the cross-entropy term sees the whole set, its gradient split by rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..augment import get_augment, resolve_augment
from ..config import check_config, setting
from ..nets import fresh_net, get_net
from .base import OBJECTIVES, StepContext, real_count


def mean_embedding_loss(emb_real: torch.Tensor, emb_syn: torch.Tensor) -> torch.Tensor:
    return ((emb_real.mean(0) - emb_syn.mean(0)) ** 2).sum()


def gaussian_mmd(emb_real: torch.Tensor, emb_syn: torch.Tensor,
                 scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Biased MMD^2 between two samples under sum_s exp(-d^2 / (s * median d^2 of the real sample))."""
    d_rr = torch.cdist(emb_real, emb_real).pow(2)
    d_ss = torch.cdist(emb_syn, emb_syn).pow(2)
    d_rs = torch.cdist(emb_real, emb_syn).pow(2)
    off_diagonal = d_rr[~torch.eye(len(emb_real), dtype=torch.bool, device=d_rr.device)]
    base = (
        off_diagonal.median().detach().clamp_min(1e-12)
        if off_diagonal.numel()
        else d_rs.detach().mean().clamp_min(1e-12)
    )

    def k(d):
        return sum(torch.exp(-d / (s * base)) for s in scales)

    return k(d_rr).mean() + k(d_ss).mean() - 2 * k(d_rs).mean()


def mean_cov_loss(emb_real: torch.Tensor, emb_syn: torch.Tensor) -> torch.Tensor:
    """DM's mean gap plus the squared Frobenius gap of the (biased) covariance matrices."""
    def cov(e):
        centred = e - e.mean(0)
        return centred.T @ centred / len(e)

    return mean_embedding_loss(emb_real, emb_syn) + ((cov(emb_real) - cov(emb_syn)) ** 2).sum()


KERNELS = {"linear": mean_embedding_loss, "gaussian": gaussian_mmd, "mean+cov": mean_cov_loss}


@OBJECTIVES.register("dm")
@dataclass
class DistributionMatching:
    parallel: ClassVar[str] = "classes"  # several processes split the classes (gendistill.objectives)
    net: str = "convnet"
    depth: int = setting(3, min=1)
    width: int = setting(128, min=1)
    pool: str = "avgpooling"  # "none" keeps a 4x7x7 latent's spatial detail in the embedding (128*7*7 features)
    augment: str = "auto"  # "auto": DSA on images, the latent variant on latents
    kernel: str = setting("linear", choices=tuple(KERNELS))  # linear (DM), gaussian (M3D's MMD), mean+cov
    # fresh: a new random net every step (DM); trained: IDM's queue of nets learning the real data
    proxy: str = setting("fresh", choices=("fresh", "trained"))
    proxy_nets: int = setting(10, min=1)  # queue length (trained)
    proxy_train: int = setting(2, min=1)  # nets of the queue that take one SGD step per distillation step
    proxy_max_steps: int = setting(100, min=1)  # a net this trained is replaced by a fresh one
    proxy_lr: float = setting(0.01, above=0)
    proxy_batch: int = setting(32, min=1)  # real samples per class in a proxy training step
    # IDM: + ce_weight * cross-entropy of the proxy net on the augmented synthetic set
    ce_weight: float = setting(0.0, min=0)

    def __post_init__(self):
        check_config(self)
        self._discrepancy = KERNELS[self.kernel]
        self._queue: list[dict] = []  # {"net", "opt", "steps"}
        self._pending: list[dict] | None = None  # a loaded queue, rebuilt once a call says where the nets live
        self._augments = {space: get_augment(resolve_augment(self.augment, space)) for space in ("pixel", "latent")}

    @property
    def whole_set(self) -> bool:
        """The cross-entropy term sees every synthetic sample (so every process needs the whole set decoded)."""
        return bool(self.ce_weight)

    # -- the trained proxy queue (IDM) --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"queue": [{"net": e["net"].state_dict(), "opt": e["opt"].state_dict(), "steps": e["steps"]}
                          for e in self._queue]}

    def load_state_dict(self, state: dict) -> None:
        self._queue, self._pending = [], list(state.get("queue", []))

    def _new_entry(self, ctx: StepContext, generator: torch.Generator | None) -> dict:
        kw = dict(depth=self.depth, width=self.width, pool=self.pool)
        net = fresh_net(self.net, ctx.in_shape, ctx.num_classes, generator, **kw) if generator is not None else \
            get_net(self.net, ctx.in_shape, ctx.num_classes, **kw)
        net = net.to(ctx.device)
        return {"net": net, "opt": torch.optim.SGD(net.parameters(), lr=self.proxy_lr, momentum=0.9, weight_decay=5e-4),
                "steps": 0}

    def _trained_net(self, reals: list[torch.Tensor], ctx: StepContext) -> torch.nn.Module:
        if self._pending is not None:
            for saved in self._pending:
                entry = self._new_entry(ctx, None)
                entry["net"].load_state_dict(saved["net"])
                entry["opt"].load_state_dict(saved["opt"])
                entry["steps"] = int(saved["steps"])
                self._queue.append(entry)
            self._pending = None
        while len(self._queue) < self.proxy_nets:
            self._queue.append(self._new_entry(ctx, ctx.generator))
        augment = self._augments[ctx.space]
        x = torch.cat([r[: self.proxy_batch] for r in reals])
        y = torch.cat([torch.full((min(len(r), self.proxy_batch),), c, dtype=torch.long, device=x.device)
                       for c, r in enumerate(reals)])
        chosen = torch.randperm(len(self._queue), generator=ctx.generator)[: self.proxy_train].tolist()
        for i in chosen:
            entry = self._queue[i]
            if entry["steps"] >= self.proxy_max_steps:
                entry = self._queue[i] = self._new_entry(ctx, ctx.generator)
            net = entry["net"].requires_grad_(True).train()
            entry["opt"].zero_grad(set_to_none=True)
            x_aug = augment.apply(ctx.transform(x.detach()), augment.make_params(len(x), ctx.generator, ctx.device))
            F.cross_entropy(net(x_aug).float(), y).backward()
            entry["opt"].step()
            entry["steps"] += 1
        pick = int(torch.randint(len(self._queue), (1,), generator=ctx.generator))
        return self._queue[pick]["net"].requires_grad_(False)

    # -- one matching step ---------------------------------------------------------------------------------------------
    def __call__(self, syn, syn_labels, real, ctx: StepContext) -> torch.Tensor:
        augment = self._augments[ctx.space]
        if self.proxy == "trained":  # the queue learns from every class, on every process alike
            reals = {c: real(c) for c in range(ctx.num_classes)}
            net = self._trained_net([reals[c] for c in range(ctx.num_classes)], ctx)
        else:
            reals = {c: real(c) for c in range(ctx.num_classes) if ctx.matches(c)}
            net = fresh_net(self.net, ctx.in_shape, ctx.num_classes, ctx.generator, depth=self.depth, width=self.width,
                            pool=self.pool).to(ctx.device)
            net.requires_grad_(False)
        loss = syn.new_zeros(())
        for c in range(ctx.num_classes):
            x_syn = syn[syn_labels == c]
            n_real = len(reals[c]) if c in reals else real_count(real, c)
            params = augment.make_params(max(n_real, len(x_syn)), ctx.generator, ctx.device)  # drawn for every class
            if not ctx.matches(c):
                continue  # another process matches this class
            with torch.no_grad():  # the real side needs no graph
                emb_real = net.embed(augment.apply(ctx.transform(reals[c]), params))
            emb_syn = net.embed(augment.apply(ctx.transform(x_syn), params))
            loss = loss + self._discrepancy(emb_real.float(), emb_syn.float())
        if self.ce_weight:
            params = augment.make_params(len(syn), ctx.generator, ctx.device)
            x = ctx.own_rows(syn, syn_labels)
            loss = loss + ctx.shared_term(self.ce_weight * F.cross_entropy(net(augment.apply(ctx.transform(x),
                                                                                             params)).float(),
                                                                           syn_labels))
        return loss


@OBJECTIVES.register("mmd")
@dataclass
class MaximumMeanDiscrepancy(DistributionMatching):
    """M3D: DM with the Gaussian-kernel MMD of the embeddings instead of their mean gap."""

    kernel: str = "gaussian"
