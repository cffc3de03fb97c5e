"""SRe2L's recover step (Yin et al. 2023): synthesise samples a BatchNorm teacher finds typical of their class.

With a teacher trained on the real data (the squeeze step, :mod:`gendistill.sre2l`) held fixed in eval mode, the set is
optimised so that its (augmented) samples are classified as their class and, at the input of every BatchNorm layer,
have the batch statistics the teacher saw in training::

    L = CE(teacher(A(x_syn)), y_syn)
        + bn_weight * sum_l m_l (|| mu_l(x) - running_mean_l ||_2 + || var_l(x) - running_var_l ||_2)

where mu_l and var_l are the per-channel mean and biased variance over the batch and the spatial positions of what
enters BN layer l, and m_l is ``first_bn_multiplier`` for the first layer and 1 for the others (the reference's
later code weights the first layer more). No real data is read. The teacher sees what the match space holds: decoded,
normalised images (pixel) or latents. The relabel step runs after the loop (:func:`gendistill.sre2l.relabel`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import DSAConfig, get_augment
from .base import OBJECTIVES, StepContext

SRE2L_IMAGE_AUGMENT = DSAConfig(strategy="crop_scale_flip", mode="all")  # the random-resized-crop + flip of SRe2L


def sre2l_augment(name: str, space: str):
    """``auto``: crop, scale and flip together on images (SRe2L's random resized crop and flip), the latent variant on
    latents."""
    if name == "auto":
        return get_augment("dsa", SRE2L_IMAGE_AUGMENT) if space == "pixel" else get_augment("latent")
    return get_augment(name)


class BNStatistics:
    """Forward hooks on every BatchNorm layer of ``module``: the distance of each input's batch statistics to the
    layer's running statistics, collected per forward pass (``pop`` returns their weighted sum and clears them)."""

    def __init__(self, module: nn.Module, first_multiplier: float = 1.0):
        self.layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError(f"the teacher ({type(module).__name__}) has no BatchNorm layers, which SRe2L's recover "
                             "step matches; train it with --teacher-net convnet-bn (or resnet18bn)")
        self.first_multiplier = float(first_multiplier)
        self.terms: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, layer, inputs, output) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        term = torch.linalg.vector_norm(mean - layer.running_mean.to(x.dtype)) + torch.linalg.vector_norm(
            var - layer.running_var.to(x.dtype)
        )
        self.terms.append(term * (self.first_multiplier if not self.terms else 1.0))

    def pop(self) -> torch.Tensor:
        if not self.terms:
            raise RuntimeError("no BatchNorm layer ran since the last pop")
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@OBJECTIVES.register("sre2l")
@dataclass
class SRe2LRecover:
    teacher: nn.Module | None = None
    teacher_space: str | None = None  # the match space the teacher was trained in ("pixel" or "latent")
    bn_weight: float = 0.01
    first_bn_multiplier: float = 10.0
    augment: str = "auto"

    def __post_init__(self):
        if self.teacher is None:
            raise ValueError("SRe2L's recover step needs a teacher: pass --teacher DIR, or leave it out and "
                             "recipes/sre2l.py trains one")
        if not self.bn_weight >= 0:
            raise ValueError(f"--bn-weight must be >= 0, got {self.bn_weight}")
        self.teacher.eval().requires_grad_(False)
        self.stats = BNStatistics(self.teacher, self.first_bn_multiplier)
        self._augments = {space: sre2l_augment(self.augment, space) for space in ("pixel", "latent")}
        self.last_terms: dict = {}

    def __call__(self, syn, syn_labels, real, ctx: StepContext) -> torch.Tensor:
        if self.teacher_space is not None and ctx.space != self.teacher_space:
            raise ValueError(f"the teacher was trained in the {self.teacher_space} space but this run matches in the "
                             f"{ctx.space} space; train a teacher for it (leave out --teacher) or use --match-space "
                             f"{self.teacher_space}")
        teacher = self.teacher
        if next(teacher.parameters()).device != syn.device or next(teacher.parameters()).dtype != syn.dtype:
            teacher.to(syn.device, syn.dtype)
        augment = self._augments[ctx.space]
        x = augment.apply(ctx.transform(syn), augment.make_params(len(syn), ctx.generator, ctx.device))
        self.stats.terms = []
        logits = teacher(x)
        ce = F.cross_entropy(logits.float() if logits.dtype != torch.float64 else logits, syn_labels)
        bn = self.stats.pop()
        self.last_terms = {"ce": float(ce.detach()), "bn": float(bn.detach())}
        return ce + self.bn_weight * bn
