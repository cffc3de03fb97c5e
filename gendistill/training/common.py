"""What the backbone trainers (autoencoder, GAN, latent diffusion) share: the EMA update and epoch checkpoints.

A trainer that runs for half an hour must not lose it to a crash or a Ctrl-C: ``EpochCheckpoint`` writes the
training state (modules, optimisers, schedulers, the data generator, epoch and step) atomically after every epoch to
``<output>.ckpt``; the recipe's ``--resume`` continues from it and gives the same weights as an uninterrupted run,
since everything random comes from the stored generator. The file is removed once the backbone is saved. It is a
safetensors file with the non-tensor state as JSON (:mod:`gendistill.state`): no pickle, so a tampered checkpoint
cannot run code.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..errors import first_line
from ..io import atomic_dir
from ..state import load_state, save_state


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameter by parameter."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)


def checkpoint_path(output: str | Path) -> Path:
    """Where a trainer writing ``output`` keeps its epoch checkpoint: beside it, ``<output>.ckpt``."""
    output = Path(output)
    return output.with_name(output.name + ".ckpt")


class EpochCheckpoint:
    """The training state of one backbone trainer, saved after each epoch and loaded by ``--resume``.

    ``parts`` maps names to objects with ``state_dict``/``load_state_dict`` (modules, optimisers, lr schedulers);
    ``generator`` is the trainer's data/noise generator; ``config`` (a dataclass) must be equal on resume.
    ``path=None`` turns checkpointing off (tests, library use).
    """

    def __init__(self, path: str | Path | None, config, parts: dict, generator: torch.Generator, resume: bool = False):
        self.path = Path(path) if path is not None else None
        self.config = json.loads(json.dumps(dataclasses.asdict(config), default=str))
        self.parts, self.generator, self.resume = parts, generator, resume
        if self.path is not None and self.path.exists() and not resume:
            raise FileExistsError(f"{str(self.path)!r} holds an interrupted training run; pass --resume to continue it "
                                  "or delete the file to start over")
        if self.path is not None and resume and not self.path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {str(self.path)!r}; run without --resume to start")

    def load(self) -> tuple[int, int]:
        """(first epoch to run, steps done): (0, 0) without ``resume``. The file is safetensors + JSON (no pickle:
        nothing in it is executed); one of another kind, truncated or not fitting this trainer raises one line."""
        if self.path is None or not self.resume:
            return 0, 0
        try:
            state = load_state(self.path, "training checkpoint")
            _check_layout(state, self.parts, self.path)
        except ValueError as e:
            raise ValueError(f"{e}; delete it and start over") from None
        if state["config"] != self.config:
            diff = sorted(k for k in set(self.config) | set(state["config"])
                          if self.config.get(k) != state["config"].get(k))
            raise ValueError(f"{str(self.path)!r} was written with a different config ({', '.join(diff)}); "
                             "resume with the same flags or delete it to start over")
        try:
            for name, obj in self.parts.items():
                obj.load_state_dict(state["parts"][name])
            self.generator.set_state(state["generator"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{str(self.path)!r} holds a training state that does not fit this trainer "
                             f"({type(e).__name__}: {first_line(e)}); delete it and start over") from None
        return int(state["epoch"]) + 1, int(state["step"])

    def save(self, epoch: int, step: int) -> None:
        if self.path is None:
            return
        state = {"config": self.config, "epoch": epoch, "step": step, "generator": self.generator.get_state(),
                 "parts": {name: obj.state_dict() for name, obj in self.parts.items()}}
        save_state(state, self.path)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _check_layout(state, parts: dict, path: Path) -> None:
    """``state`` has the fields :meth:`EpochCheckpoint.save` writes, of the right types, and every part."""
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} is not a readable training checkpoint (its state is not a mapping)")
    kinds = {"config": dict, "epoch": int, "step": int, "generator": torch.Tensor, "parts": dict}
    wrong = sorted(k for k, kind in kinds.items() if not isinstance(state.get(k), kind)
                   or isinstance(state.get(k), bool))
    if wrong:
        raise ValueError(f"{str(path)!r} is not a readable training checkpoint (missing or mistyped "
                         f"{', '.join(wrong)})")
    missing = sorted(set(parts) - set(state["parts"]))
    if missing:
        raise ValueError(f"{str(path)!r} is not a readable training checkpoint of this trainer (no state for "
                         f"{', '.join(missing)})")


@contextmanager
def resumable(path: str | Path):
    """On Ctrl-C, say where the finished epochs are and how to continue, then let the interrupt through."""
    try:
        yield
    except KeyboardInterrupt:
        if Path(path).exists():
            print(f"\ninterrupted; the finished epochs are in {path}: "
                  "run the same command with --resume to continue", file=sys.stderr)
        raise


def save_trained(backbone, train, cfg, output: str | Path, recipe: str, samples_per_class: int = 0,
                 seed: int = 0) -> None:
    """Write a freshly trained backbone to ``output`` atomically (diffusers layout, gendistill.json with the dataset,
    recipe and config), with ``samples.png`` (``samples_per_class`` per class, one row per class) for generators;
    then remove the trainer's epoch checkpoint, which the saved directory supersedes."""
    from ..plots import image_grid, save_png

    images = None
    if samples_per_class > 0:
        labels = torch.arange(train.num_classes).repeat_interleave(samples_per_class)
        images = backbone.sample_images(labels, torch.Generator().manual_seed(seed)).clamp(0, 1)
    with atomic_dir(output) as tmp:
        backbone.save_pretrained(tmp, extra={"dataset": train.meta(), "recipe": recipe,
                                             "config": dataclasses.asdict(cfg)})
        if images is not None:
            save_png(image_grid(images, labels, train.num_classes), tmp / "samples.png")
    checkpoint_path(output).unlink(missing_ok=True)
