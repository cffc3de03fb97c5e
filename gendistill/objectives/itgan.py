"""IT-GAN (Zhao & Bilen 2022, "Synthesizing informative training samples with GAN"): learn GAN latents, started at
the inversions of real images, so that their decodes are informative training data.

loss = DM(syn, real)                                   distribution matching of the decoded images (a fresh random
                                                       ConvNet per step, siamese augmentation: the "dm" objective)
     + cls_weight * CE(classifier(syn), class)         a fixed network trained on the real data must recognise them
     + reg_weight * mean_i ||z_i - z0_i||^2            (``latent_loss``) each latent stays near its inversion z0_i

The first two terms see images (pixel match space, decode-through); the third sees the latents, so it is the
objective's ``latent_loss``, which the distillation loop adds to the latents' gradient. The classifier and the anchors
z0 are the objective's state (checkpointed with the run).

Several processes split the classes of the DM term (``parallel = "classes"``); the classifier term sees the whole set on
every process with its gradient split by rows, and the latent term is added by the loop after the gradients are summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_limits
from .base import OBJECTIVES, StepContext, get_objective


@OBJECTIVES.register("itgan")
class ITGAN:
    parallel = "classes"  # several processes split the classes of the DM term (gendistill.objectives)
    limits = {"cls_weight": {"min": 0}, "reg_weight": {"min": 0}}  # a recipe's config checks them too (with_objective)

    def __init__(self, cls_weight: float = 0.1, reg_weight: float = 0.01, classifier: nn.Module | None = None,
                 anchors: torch.Tensor | None = None, **dm):
        """``dm``: the settings of the wrapped "dm" objective (net, depth, width, pool, augment, ...)."""
        self.cls_weight = check_limits("cls_weight", cls_weight, float, self.limits["cls_weight"])
        self.reg_weight = check_limits("reg_weight", reg_weight, float, self.limits["reg_weight"])
        self.dm = get_objective("dm", **dm)
        self.classifier = None if classifier is None else classifier.eval().requires_grad_(False)
        self.anchors = None if anchors is None else anchors.detach().clone()

    @property
    def whole_set(self) -> bool:
        """The classifier term sees every synthetic image (so every process needs the whole set decoded)."""
        return bool(self.cls_weight) or bool(getattr(self.dm, "whole_set", False))

    def __call__(self, syn, syn_labels, real, ctx: StepContext) -> torch.Tensor:
        loss = self.dm(syn, syn_labels, real, ctx)
        if self.cls_weight:
            if ctx.space != "pixel":
                raise ValueError("itgan's classification term needs images; use --match-space pixel")
            if self.classifier is None:
                raise ValueError("itgan has no classifier; recipes/itgan.py trains one on the real data (or set "
                                 "--cls-weight 0)")
            self.classifier.to(ctx.device)
            x = ctx.own_rows(syn, syn_labels)
            loss = loss + ctx.shared_term(self.cls_weight * F.cross_entropy(self.classifier(ctx.transform(x)).float(),
                                                                            syn_labels))
        return loss

    def latent_loss(self, latents: torch.Tensor, syn_labels: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if not self.reg_weight:
            return latents.sum() * 0.0
        if self.anchors is None:
            raise ValueError("itgan has no anchor latents (the inversions the set started from); "
                             "recipes/itgan.py sets them")
        if self.anchors.shape != latents.shape:
            raise ValueError(f"itgan anchors have shape {tuple(self.anchors.shape)} but the set's latents "
                             f"{tuple(latents.shape)}")
        anchors = self.anchors.to(latents.device, latents.dtype)
        return self.reg_weight * (latents - anchors).pow(2).flatten(1).sum(1).mean()

    # -- checkpointed state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"anchors": self.anchors}
        if self.classifier is not None:
            state["classifier"] = {k: v.detach().cpu() for k, v in self.classifier.state_dict().items()}
        if hasattr(self.dm, "state_dict"):
            state["dm"] = self.dm.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("anchors") is not None:
            self.anchors = state["anchors"].detach().clone()
        if "classifier" in state:
            if self.classifier is None:
                raise ValueError("the checkpoint holds an itgan classifier but the objective has none to load it into")
            self.classifier.load_state_dict(state["classifier"])
        if "dm" in state and hasattr(self.dm, "load_state_dict"):
            self.dm.load_state_dict(state["dm"])
