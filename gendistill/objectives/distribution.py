"""Distribution matching (DM, Zhao & Bilen 2023): match per-class mean embeddings of a freshly initialised net.

loss = sum_c || mean_i f(A(x_real_ci)) - mean_j f(A(x_syn_cj)) ||^2, with f a random ConvNet drawn anew each step
(its weights fixed) and A a siamese augmentation sharing its parameters between the real and synthetic batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..augment import get_augment
from ..nets import fresh_net
from . import OBJECTIVES, StepContext


def mean_embedding_loss(emb_real: torch.Tensor, emb_syn: torch.Tensor) -> torch.Tensor:
    return ((emb_real.mean(0) - emb_syn.mean(0)) ** 2).sum()


@OBJECTIVES.register("dm")
@dataclass
class DistributionMatching:
    net: str = "convnet"
    depth: int = 3
    width: int = 128
    pool: str = "avgpooling"  # "none" keeps a 4x7x7 latent's spatial detail in the embedding (128*7*7 features)
    augment: str = "auto"  # "auto": DSA on images, the latent variant on latents

    def __post_init__(self):
        self._augments = {space: get_augment(self.augment if self.augment != "auto" else ("dsa" if space == "pixel" else "latent"))
                          for space in ("pixel", "latent")}

    def __call__(self, syn, syn_labels, real, ctx: StepContext) -> torch.Tensor:
        net = fresh_net(self.net, ctx.in_shape, ctx.num_classes, ctx.generator, depth=self.depth, width=self.width, pool=self.pool).to(ctx.device)
        net.requires_grad_(False)
        augment = self._augments[ctx.space]
        loss = syn.new_zeros(())
        for c in range(ctx.num_classes):
            x_syn = syn[syn_labels == c]
            x_real = real(c)
            params = augment.make_params(max(len(x_real), len(x_syn)), ctx.generator, ctx.device)
            with torch.no_grad():  # the real side needs no graph
                emb_real = net.embed(augment.apply(ctx.transform(x_real), params))
            emb_syn = net.embed(augment.apply(ctx.transform(x_syn), params))
            loss = loss + mean_embedding_loss(emb_real.float(), emb_syn.float())
        return loss
