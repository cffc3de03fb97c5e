"""The objectives' registry and protocol types: what every matching objective is called with and returns.

An objective is called once per distillation step with the synthetic batch (in the match space), a function
that returns a real batch of a class, and a :class:`StepContext`; it returns the scalar loss.
``syn_labels`` are always hard class ids; soft labels and the learnable lr come in the context. An objective that
keeps state between steps (DC's inner-loop network) defines ``state_dict`` / ``load_state_dict`` and the loop
checkpoints it with the set. An objective may also define ``latent_loss(latents, syn_labels, ctx) -> Tensor``, a term
on the set's latents themselves (IT-GAN keeps each latent near its inversion); the loop adds its gradient to the one
the match gives the latents (through the decoder in pixel space) and reports the sum as the loss.

Several processes (``accelerate launch``). An objective says how its work splits with ``parallel``:
 - ``"classes"`` (class-separable: DM and its variants, DC/DSA, IT-GAN's match term): the loss is a sum over classes,
   so process r matches only the classes in ``ctx.classes`` (c % P == r) and the loop sums the gradients over the
   processes. Nets and augmentation come from ``ctx.generator``, identical on every process: an objective draws them
   for every class in the same order (skipping the work, not the draw, of other processes' classes), so P processes
   compute the 1-process gradient with 1/P of the matching. A term over the whole set (IDM's cross-entropy, IT-GAN's
   classifier term, DC's inner loop) is computed on every process; ``ctx.own_rows`` lets its gradient reach only this
   process's rows and ``ctx.shared_term`` counts its value once. Such an objective sets ``whole_set`` True so that,
   in pixel space, every process decodes the whole set (otherwise only its own classes' latents).
 - ``"replicas"`` (the default; trajectory matching): every process computes the whole loss with its own randomness
   (``ctx.local_generator``) and the loop averages the gradients: P processes average P draws.
The real batches (``real(c)``) are drawn for every class from one generator identical on every process, so the batch of
class c is the same whichever process matches it; ``--batch-real`` is per class, whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

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
    classes: tuple[int, ...] | None = None  # the classes this process matches ("classes" objectives); None: all of them
    processes: int = 1  # how many processes share the step
    # this process's own randomness ("replicas" objectives); None: ``generator``
    local_generator: torch.Generator | None = None

    def matches(self, c: int) -> bool:
        """Whether this process matches class ``c``."""
        return self.classes is None or c in self.classes

    @property
    def rank_generator(self) -> torch.Generator:
        return self.local_generator if self.local_generator is not None else self.generator

    def own_rows(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``x`` with the rows of other processes' classes detached: a whole-set term's gradient reaches only ours."""
        if self.classes is None:
            return x
        mine = torch.isin(labels, torch.tensor(self.classes, dtype=labels.dtype, device=labels.device))
        return torch.where(mine.view(-1, *([1] * (x.dim() - 1))), x, x.detach())

    def shared_term(self, term: torch.Tensor) -> torch.Tensor:
        """A term every process computes alike: its value counted once over the processes, its gradient untouched."""
        if self.classes is None:
            return term
        return term.detach() / self.processes + (term - term.detach())


class RealBatches:
    """``real(c)``: the real batch of class ``c`` for one step (``count`` samples, on ``device``).

    The first request of a step draws the batches of every class, in class order, from ``generator``; later requests
    (of any class, repeated or not) reuse them. Every process holds the whole split and the same generator, so the
    batch of a class does not depend on which process matches it.
    """

    def __init__(self, split, batch: int, generator: torch.Generator, device):
        self.split, self.batch, self.generator, self.device = split, int(batch), generator, device
        self._indices: list[torch.Tensor] | None = None
        self._tensors: dict[int, torch.Tensor] = {}

    def count(self, c: int) -> int:
        return min(self.batch, len(self.split.class_indices(c)))

    def draw(self) -> None:
        """Draw this step's batches now if no request has (keeps the generator in step on a process that asked none)."""
        if self._indices is None:
            self._indices = [self.split.sample_class(k, self.count(k), self.generator)
                             for k in range(self.split.num_classes)]

    def __call__(self, c: int) -> torch.Tensor:
        self.draw()
        if c not in self._tensors:
            self._tensors[c] = self.split.latents[self._indices[c]].to(self.device)
        return self._tensors[c]


def real_count(real: Callable[[int], torch.Tensor], c: int) -> int:
    """How many samples ``real(c)`` gives, without moving them when ``real`` can say (a :class:`RealBatches`)."""
    return real.count(c) if hasattr(real, "count") else len(real(c))


class Objective(Protocol):
    def __call__(self, syn: torch.Tensor, syn_labels: torch.Tensor, real: Callable[[int], torch.Tensor],
                 ctx: StepContext) -> torch.Tensor: ...


def get_objective(name: str, **kwargs) -> Objective:
    return OBJECTIVES.get(name)(**kwargs)


def list_objectives() -> list[str]:
    return OBJECTIVES.names()

