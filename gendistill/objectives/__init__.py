"""Matching objectives behind one registry; each method lives in its own module.

An objective is called once per distillation step with the synthetic batch (in the match space), a function
that returns a real batch of a class, and a :class:`StepContext`; it returns the scalar loss.
``syn_labels`` are always hard class ids; soft labels and the learnable lr come in the context. An objective that
keeps state between steps (DC's inner-loop network) defines ``state_dict`` / ``load_state_dict`` and the loop
checkpoints it with the set. An objective may also define ``latent_loss(latents, syn_labels, ctx) -> Tensor``, a term
on the set's latents themselves (IT-GAN keeps each latent near its inversion); the loop adds its gradient to the one
the match gives the latents (through the decoder in pixel space) and reports the sum as the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from ..registry import Registry

OBJECTIVES: Registry = Registry("objective")


@dataclass
class StepContext:
    step: int
    generator: torch.Generator  # shared by every process: nets and augmentation are identical across ranks
    in_shape: tuple[int, ...]
    num_classes: int
    device: torch.device
    space: str = "latent"  # the match space: "latent" or "pixel"
    transform: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda x: x)  # e.g. normalisation of images
    syn_lr: torch.Tensor | None = None  # the set's learnable eval lr (trajectory matching), if it has one
    soft_labels: torch.Tensor | None = None  # (N, K) soft labels when the set has them (learnable for DATM)


class Objective(Protocol):
    def __call__(self, syn: torch.Tensor, syn_labels: torch.Tensor, real: Callable[[int], torch.Tensor], ctx: StepContext) -> torch.Tensor: ...


def get_objective(name: str, **kwargs) -> Objective:
    return OBJECTIVES.get(name)(**kwargs)


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


from . import distribution  # noqa: E402,F401  (registers "dm")
from . import gradient  # noqa: E402,F401  (registers "dc", "dsa")
from . import trajectory  # noqa: E402,F401  (registers "mtt", "tesla", "datm")
from . import krr  # noqa: E402,F401  (registers "kip", "frepo")
from . import bptt  # noqa: E402,F401  (registers "bptt", "ratbptt")
from . import cafe  # noqa: E402,F401  (registers "cafe")
from . import sre2l  # noqa: E402,F401  (registers "sre2l")
from . import itgan  # noqa: E402,F401  (registers "itgan")
